"""Filters, negative terms and pagination through the real search path (``Index.search_embeddings``
and ``milnce search``), against a brute-force reference over random metadata (issue 20)."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import milnce.index.search as search_mod
from milnce.cli import main
from milnce.index import Index
from milnce.index.filters import NoVideoMatchesError, VideoFilter, collection_root
from milnce.index.moments import iter_video_moments
from milnce.windows import WindowSettings

W = WindowSettings(fps=10.0, num_frames=8, size=32, stride=4)
ROOT = "/media/footage"
FOLDERS = ["kitchen", "kitchen/2024", "garden", "garden/dogs", "a b"]
NAMES = ["cook", "dog", "walk", "Cat"]
EXTS = [".mp4", ".mkv"]
CENTRES = np.random.default_rng(99).standard_normal((12, 512)).astype(np.float32)


def _windows(rng: np.random.Generator, n: int) -> SimpleNamespace:
    c = CENTRES[rng.integers(0, len(CENTRES), size=n)]
    emb = (c + 0.8 * rng.standard_normal((n, 512))).astype(np.float32)
    starts = np.arange(n, dtype=np.float64) * 0.4
    return SimpleNamespace(starts=starts, ends=starts + 0.8, embeddings=emb, duration=float(starts[-1] + 0.8))


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> Path:
    """~21,000 windows in 40 videos with random folders, names, mtimes and durations (paths need
    not exist: the search path never opens them)."""
    d = tmp_path_factory.mktemp("wire") / "ix"
    rng = np.random.default_rng(5)
    idx = Index.create_for(d, "w1", W, roots=[ROOT])
    for i in range(40):
        path = f"{ROOT}/{FOLDERS[i % len(FOLDERS)]}/{NAMES[rng.integers(4)]}{i}{EXTS[rng.integers(2)]}"
        mtime = float(1.70e9 + rng.integers(0, 10**7))
        idx.add_video(path, _windows(rng, int(rng.integers(380, 680))), size=100 + i, mtime=mtime, content_hash="")
    assert len(idx) > 20000  # the int8 screen runs from 20,000 rows on
    idx.close()
    return d


def reference(index: Index, q: np.ndarray, k: int, filt: VideoFilter | None = None,
              neg: np.ndarray | None = None, w: float = 0.5, offset: int = 0) -> list[tuple[int, float, float, float]]:
    """Brute force: every allowed video's float64 combined scores -> moments, ranked."""
    rows = index.rows()
    if filt is not None:
        f = filt.validated(collection_root(r.path for r in rows))
        rows = [r for r in rows if f.matches(r)]
    found = []
    for r in rows:
        starts, ends, emb = index.windows(r.id)
        x = emb.astype(np.float64)
        s = x @ q.astype(np.float64)
        if neg is not None:
            s = s - w * (x @ neg.astype(np.float64).T).max(axis=1)
        for a, b, _p, sc in iter_video_moments(s.astype(np.float32)):
            found.append((-sc, r.id, float(starts[a]), float(ends[b])))
    found.sort()
    return [(vid, a, b, -s) for s, vid, a, b in found[offset:offset + k]]


def same(got, ref) -> None:
    assert [(m.video_id, m.start, m.end) for m in got] == [(v, a, b) for v, a, b, _ in ref]
    np.testing.assert_allclose([m.score for m in got], [s for *_, s in ref], rtol=1e-4, atol=1e-3)


def random_filter(rng: np.random.Generator) -> VideoFilter:
    kind = rng.integers(5)
    if kind == 0:
        return VideoFilter(under=f"{ROOT}/{FOLDERS[rng.integers(len(FOLDERS))]}")
    if kind == 1:
        return VideoFilter(path_glob=str(rng.choice(["*.mkv", "garden/**", "kitchen/*/*", "dog*", "**/C?t*"])))
    if kind == 2:
        lo = 1.70e9 + rng.integers(0, 5 * 10**6)
        return VideoFilter(mtime_min=float(lo), mtime_max=float(lo + 4 * 10**6))
    if kind == 3:
        return VideoFilter(duration_min=float(rng.uniform(150, 200)), duration_max=float(rng.uniform(220, 280)))
    return VideoFilter(under=f"{ROOT}/kitchen", path_glob="*.mp4", duration_min=160.0)


@pytest.mark.parametrize("few_rows", [True, False], ids=["allowed-rows-scored-one-by-one", "int8-screen"])
def test_filters_match_brute_force(big, monkeypatch, few_rows):
    if not few_rows:
        monkeypatch.setattr(search_mod, "FEW_ROWS", 0)
    rng = np.random.default_rng(1 if few_rows else 2)
    checked = 0
    with Index.open(big) as index:
        for _ in range(8):
            filt = random_filter(rng)
            q = (CENTRES[rng.integers(12)] + 0.5 * rng.standard_normal(512)).astype(np.float32)
            ref = reference(index, q, 12, filt)
            if not ref:
                with pytest.raises(NoVideoMatchesError, match="no indexed video matches"):
                    index.search_embeddings(q, 12, video_filter=filt)
                continue
            checked += 1
            got = index.search_embeddings(q, 12, video_filter=filt)[0]
            same(got, ref)
            allowed = {r.id for r in index.rows() if filt.validated(collection_root(x.path for x in index.rows())).matches(r)}
            assert {m.video_id for m in got} <= allowed
    assert checked >= 5


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


def test_filtered_ann_refills_until_k_pass(big, tmp_path):
    pytest.importorskip("faiss")
    import shutil

    d = tmp_path / "ann"
    shutil.copytree(big, d)
    with Index.open(d, readonly=False) as index:
        index.build_ann(nlist=16)
        assert index.ann() is not None
        filt = VideoFilter(path_glob="dog*")  # a few videos: the ANN's first candidates mostly fail it
        for f in (filt, VideoFilter(under=f"{ROOT}/garden")):
            allowed = {r.id for r in index.rows()
                       if f.validated(collection_root(x.path for x in index.rows())).matches(r)}
            for few in (True, False):
                got = index.search_embeddings(CENTRES[7], 20, video_filter=f)[0] if few else None
                if got is None:
                    old = search_mod.FEW_ROWS
                    search_mod.FEW_ROWS = 0
                    try:
                        got = index.search_embeddings(CENTRES[7], 20, video_filter=f)[0]
                    finally:
                        search_mod.FEW_ROWS = old
                assert len(got) == 20 and {m.video_id for m in got} <= allowed


# -- the command ---------------------------------------------------------------------------------


@pytest.fixture
def cli_model(model, monkeypatch):
    monkeypatch.setattr("milnce.commands.search.model_from_args", lambda args: model)
    monkeypatch.setattr("milnce.index.Index.check_model", lambda self, m: None)
    return model


def test_cli_filters_negatives_offset(big, cli_model, capsys):
    import json

    ix = str(big)
    assert main(["search", "--index", ix, "cut tomato", "-k", "6", "--json", "--not", "pour water", "--under", f"{ROOT}/garden",
                 "--min-duration", "100", "--offset", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["filter"].startswith("under") and out["not"] == ["pour water"] and out["offset"] == 2
    assert out["mode"] == "exact"
    moments = out["results"][0]["moments"]
    assert len(moments) == 6 and all(m["path"].startswith(f"{ROOT}/garden/") for m in moments)
    with Index.open(big, cli_model) as index:
        want = index.search("cut tomato", 8, negatives=["pour water"], video_filter=VideoFilter(
            under=f"{ROOT}/garden", duration_min=100.0))[2:]
    assert [(m["video_id"], m["start"]) for m in moments] == [(m.video_id, m.start) for m in want]
    # a table says when the filter leaves fewer than -k results
    assert main(["search", "--index", ix, "cut tomato", "-k", "100000", "--path-glob", "dog*", "--list-videos"]) == 0
    out = capsys.readouterr().out
    assert "results within the filter)" in out and "filter: path dog*" in out


@pytest.mark.parametrize("argv, words", [
    (["--min-duration", "50", "--max-duration", "10"], "impossible duration range"),
    (["--after", "2024-05-01", "--before", "2024-01-01"], "impossible date range"),
    (["--after", "yesterday"], "is not a date"),
    (["--path-glob", "../../etc/*"], "would leave the collection"),
    (["--path-glob", "/etc/*"], "relative to the collection"),
    (["--under", "/etc"], "outside the indexed collection"),
    (["--path-glob", "*.avi"], "no indexed video matches"),
    (["--not-weight", "-1", "--not", "x"], "--not-weight must be"),
    (["--not-weight", "1"], "needs at least one --not"),
    (["--not", "qqqzzz"], "negative term 'qqqzzz'"),
    (["--offset", "-1"], "--offset must be"),
])
def test_cli_bad_filters_one_line_each(big, cli_model, capsys, argv, words):
    assert main(["search", "--index", str(big), "cut tomato", *argv]) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1 and "Traceback" not in err
    assert os.path.isdir(big)


@pytest.mark.slow
def test_index_ann_pq_is_recorded_and_searched(big, tmp_path, model, monkeypatch, capsys):
    """``--ann pq``: the IVF-PQ folder is built over the live rows, recorded in the index meta,
    opened by searches (candidates re-scored exactly), refilled under a filter, and replaced by
    ``--ann`` (ivf) when asked."""
    faiss = pytest.importorskip("faiss")
    import shutil

    from milnce.index.ingest import finish
    from milnce.index.records import IndexReport

    faiss.omp_set_num_threads(1)
    d = tmp_path / "pq"
    shutil.copytree(big, d)
    with Index.open(d, readonly=False) as index:
        report = IndexReport(str(d))
        finish(index, report, prune=False, ann="pq", ann_min_windows=0, progress=False, queries=lambda: None)
        info = index.meta["ann"]
        assert info["format"] == "pq" and (d / info["file"] / "lists.ivfdata").is_file()
        assert report.ann["recall_at_10"] >= 0.8 and index.ann_status()["state"] == "ok"
    with Index.open(d) as index:
        assert index.ann() is not None
        q = CENTRES[3] + 0.2 * CENTRES[4]
        approx = index.search_embeddings(q, 10, merge=False)[0]
        exact = index.search_embeddings(q, 10, merge=False, exact=True)[0]
        assert len({(m.video_id, m.start) for m in approx} & {(m.video_id, m.start) for m in exact}) >= 8
        ex = {(m.video_id, m.start): m.score for m in exact}
        assert all(m.score == pytest.approx(ex[(m.video_id, m.start)], rel=1e-5) for m in approx
                   if (m.video_id, m.start) in ex)  # re-scored exactly
        monkeypatch.setattr(search_mod, "FEW_ROWS", 0)
        got = index.search_embeddings(q, 10, video_filter=VideoFilter(path_glob="dog*"))[0]
        assert len(got) == 10 and all(os.path.basename(m.path).startswith("dog") for m in got)
    with Index.open(d, readonly=False) as index:  # --ann (ivf) replaces it, and the folder goes
        old = index.meta["ann"]["file"]
        finish(index, IndexReport(str(d)), prune=False, ann=True, ann_min_windows=0, progress=False, queries=lambda: None)
        assert index.meta["ann"].get("format") != "pq" and not (d / old).exists()
    # the damaged folder: a warning and exact search, as for the IVF file
    with Index.open(d, readonly=False) as index:
        finish(index, IndexReport(str(d)), prune=False, ann="pq", ann_min_windows=0, progress=False, queries=lambda: None)
        pq_dir = d / index.meta["ann"]["file"]
    (pq_dir / "lists.ivfdata").write_bytes(b"short")
    with Index.open(d) as index:
        assert index.ann_status()["state"] == "damaged" and index.ann() is None
        assert index.search_embeddings(CENTRES[3], 5)[0]
