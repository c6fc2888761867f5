"""``milnce.index.ranking``: The query side of an index."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from index_fixtures import CENTRES, ROOT, SCORE_QUERIES, WINDOW_32, key, reference, same, synthetic_index
from milnce.index import Index, video_moments
from milnce.index.filters import VideoFilter
from video_fixtures import make_scene_video


@pytest.mark.slow
def test_many_queries_run_in_bounded_memory(tiny_index, tmp_path, checkpoint):
    """A 10,000-line queries file under RLIMIT_AS (set once the model is loaded): memory does not
    grow with the number of queries (before, ~250 KB a query: 2.5 GB here, past the 600 MB allowed)."""
    qf = tmp_path / "q.txt"
    qf.write_text("".join(f"cut {i % 7}\n" for i in range(10_000)))
    script = textwrap.dedent(f"""
        import resource, sys
        import milnce
        import milnce.commands.search as cs
        from milnce.index import IndexReader
        model = milnce.load_model({str(checkpoint[0])!r}, {str(checkpoint[1])!r}, download=False)
        cs.model_from_args = lambda args: model
        IndexReader.check_model = lambda self, m: None
        size = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_AS, (size + (600 << 20), resource.RLIM_INFINITY))
        from milnce.cli import main
        sys.exit(main(["search", "--index", {str(tiny_index)!r}, "--queries-file", {str(qf)!r}, "--csv", "-k", "1"]))
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=900)
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    assert r.stdout.count(b"\n") == 10_001


@pytest.mark.usefixtures("reuse_model")
def test_library_batch_and_alone_give_the_same_scores(index_dir, model):

    with Index.open(index_dir, model) as index:
        for exact in (True, "scan"):
            together = index.search(SCORE_QUERIES, k=50, merge=False, exact=exact)
            for q, res in zip(SCORE_QUERIES, together):
                alone = index.search(q, k=50, merge=False, exact=exact)
                assert [(m.video_id, m.start, m.score) for m in alone] == [(m.video_id, m.start, m.score) for m in res]


def _all_moments_brute_force(idx: Index, q: np.ndarray) -> list[tuple]:
    out = []
    for v in idx.videos():
        starts, ends, emb = idx.windows(v.id)
        sc = emb.astype(np.float64) @ np.asarray(q, np.float64)  # the exact sums (float32 BLAS rounds by block)
        for a, b, _p, s in video_moments(sc):
            out.append((v.id, float(starts[a]), float(ends[b]), float(s)))
    out.sort(key=lambda t: (-t[3], t[0], t[1]))
    return out


@pytest.mark.usefixtures("reuse_model")
@pytest.mark.parametrize("exact", [True, "scan"])
def test_k_gives_a_prefix_of_one_ranking(tmp_path, exact):
    idx = synthetic_index(tmp_path / "ix", videos=12, windows=30)
    rng = np.random.default_rng(5)
    for q in (np.asarray(idx._vectors[7]) + 0.3 * rng.standard_normal(512).astype(np.float32),
              rng.standard_normal(512).astype(np.float32)):
        full = idx.search_embeddings(q, k=len(idx), exact=exact)[0]
        brute = _all_moments_brute_force(idx, q)
        assert len(full) == len(brute)
        for m, b in zip(full, brute):
            assert (m.video_id, m.start, m.end) == b[:3] and m.score == pytest.approx(b[3], rel=1e-5)
        for k in (1, 2, 3, 5, 7, 10, 13, 20, 40, 80):
            assert [key(m) for m in idx.search_embeddings(q, k=k, exact=exact)[0]] == [key(m) for m in full[:k]]
        # moments partition every video's windows
        for v in idx.videos():
            starts, ends, _ = idx.windows(v.id)
            covered = []
            for m in (m for m in full if m.video_id == v.id):
                a, b = int(np.flatnonzero(starts == m.start)[0]), int(np.flatnonzero(ends == m.end)[0])
                covered.extend(range(a, b + 1))
            assert sorted(covered) == list(range(v.num_windows))
        # one per video = each video's first moment in the ranking
        first: dict[int, tuple] = {}
        for m in full:
            first.setdefault(m.video_id, key(m))
        for k in (1, 4, 12):
            per_video = idx.search_embeddings(q, k=k, by_video=True, exact=exact)[0]
            assert [key(m) for m in per_video] == list(first.values())[:k]
        assert idx.video_moments(full[0].video_id, q)[0].start == full[0].start
    idx.close()


@pytest.mark.usefixtures("reuse_model")
def test_readable_scores_and_curve(small_index, model):
    with Index.open(small_index, model) as idx:
        res = idx.search("red square", k=len(idx))
        q = model.encode_text(["red square"]).numpy()[0]
        pct = [m.percentile for m in res]
        assert all(0 <= p <= 100 for p in pct) and pct == sorted(pct, reverse=True)
        for m in res[:3]:
            starts, _, emb = idx.windows(m.video_id)
            v = emb[int(np.flatnonzero(starts == m.peak)[0])]
            assert m.cosine == pytest.approx(float(v @ q) / (np.linalg.norm(v) * np.linalg.norm(q)), rel=1e-4)
            assert -1 <= m.cosine <= 1 and m.start <= m.peak < m.end
        assert set(res[0].to_dict()) >= {"score", "cosine", "percentile", "peak"}
        starts, ends, scores = idx.curve(res[0].video_id, "red square")
        s2, e2, emb = idx.windows(res[0].video_id)
        np.testing.assert_allclose(scores, emb @ q, rtol=1e-5, atol=1e-4)
        np.testing.assert_array_equal(starts, s2)
        assert idx.curve(res[0].video_id, q)[2] == pytest.approx(scores)
        with pytest.raises(KeyError):
            idx.curve(10**6, q)
        with pytest.raises(ValueError, match="vocabulary"):
            idx.curve(res[0].video_id, "xyzzy plugh")


@pytest.mark.usefixtures("reuse_model")
def test_search_like(small_index, vids, model):
    with Index.open(small_index, model) as idx:
        red = idx.video_by_path(vids / "red.mp4")
        starts, _, emb = idx.windows(red.id)
        res = idx.search_like(red.id, start=starts[1] + 0.1, k=5)
        assert res and all(m.video_id != red.id for m in res)
        want = idx.search_embeddings(emb[1], k=len(idx))[0]
        assert [key(m) for m in res] == [key(m) for m in want if m.video_id != red.id][:5]
        me = idx.search_like(str(vids / "red.mp4"), start=starts[1], k=1, include_self=True)[0]
        assert key(me) == key(want[0])  # the example's own video is kept with include_self
        # a video that is not in the index: its window is embedded with the index's settings
        other = make_scene_video(vids.parent / "other" / "x.mp4", 2.0, (200, 200, 30), 9)
        res = idx.search_like(other, start=0.0, k=3)
        ve = model.encode_video_file(other, **WINDOW_32)
        np.testing.assert_allclose(idx.like_embedding(other, 0.0)[0], ve.embeddings[0], rtol=1e-4, atol=1e-4)
        assert len(res) == 3
        with pytest.raises(ValueError):
            idx.search_like(red.id, start=float("nan"))


def test_negatives_rerank_as_specified(big, monkeypatch):
    rng = np.random.default_rng(3)
    q = CENTRES[0] + 0.3 * CENTRES[1]
    neg = np.stack([CENTRES[1], CENTRES[2]]).astype(np.float32)
    with Index.open(big) as index:
        plain = index.search_embeddings(q, 15)[0]
        for w in (0.5, 1.5):
            got = index.search_embeddings(q, 15, neg=neg, not_weight=w)[0]
            same(got, reference(index, q, 15, neg=neg, w=w))
            scan = index.search_embeddings(q, 15, neg=neg, not_weight=w, exact="scan")[0]
            assert [(m.video_id, m.start) for m in scan] == [(m.video_id, m.start) for m in got]
        assert [(m.video_id, m.start) for m in got] != [(m.video_id, m.start) for m in plain]
        # the moments themselves change (formed on the combined score), and cosine stays the positive's
        _, _, emb = index.windows(got[0].video_id)
        assert -1 <= got[0].cosine <= 1
        # a negative and a filter together
        filt = VideoFilter(path_glob="*.mkv")
        same(index.search_embeddings(q, 10, neg=neg, video_filter=filt)[0],
             reference(index, q, 10, filt, neg=neg))
        assert rng is not None


def test_pages_concatenated_equal_one_big_page(big):
    q = CENTRES[4]
    with Index.open(big) as index:
        for opts in ({}, {"by_video": True}, {"merge": False},
                     {"neg": CENTRES[5:6], "video_filter": VideoFilter(under=f"{ROOT}/garden")}):
            one = index.search_embeddings(q, 42, **opts)[0]
            pages = [m for off in range(0, 42, 7) for m in index.search_embeddings(q, 7, offset=off, **opts)[0]]
            assert [(m.video_id, m.start, m.end, m.score) for m in pages] == \
                [(m.video_id, m.start, m.end, m.score) for m in one]
        assert index.search_embeddings(q, 5, offset=10**6)[0] == []
