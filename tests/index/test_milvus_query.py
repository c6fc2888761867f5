"""The Milvus backend gives the embedded index's answers: one collection of synthetic windows
indexed both ways (the same videos added in the same order), 200 random queries with random
filters, negatives, offsets and modes give the same moments (video, start, end) and scores."""

from __future__ import annotations

import math

import numpy as np
import pytest

from milvus_fixtures import require_milvus_lite, synthetic_videos

require_milvus_lite()

from milnce.index import Index  # noqa: E402
from milnce.index.filters import NoVideoMatchesError, VideoFilter  # noqa: E402
from milnce.index.milvus_store import MilvusIndex  # noqa: E402
from milnce.windows import WindowSettings  # noqa: E402

N_VIDEOS = 240


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("parity")
    items = synthetic_videos(N_VIDEOS)
    emb_ix = Index.create_for(root / "embedded", "test-weights", WindowSettings())
    mv_ix = MilvusIndex.create_for(str(root / "parity.db"), "test-weights", WindowSettings())
    for a in range(0, len(items), 50):
        assert emb_ix.add_videos(items[a:a + 50]) == mv_ix.add_videos(items[a:a + 50])
    # a re-indexed video and a removed one: the collection keeps ids and row order as the embedded one
    emb_ix.add_videos([items[5]])
    mv_ix.add_videos([items[5]])
    emb_ix.remove_videos([9])
    mv_ix.remove_videos([9])
    yield emb_ix, mv_ix
    emb_ix.close()
    mv_ix.close()


def random_filter(rng: np.random.Generator) -> VideoFilter | None:
    kind = int(rng.integers(0, 6))
    if kind == 0:
        return None
    if kind == 1:
        return VideoFilter(under=f"/collection/{('kitchen', 'garden', 'garage')[int(rng.integers(0, 3))]}")
    if kind == 2:
        return VideoFilter(path_glob=str(rng.choice(["*.mp4", "*.mkv", "v0*", "kitchen/**", "v1?3.*"])))
    if kind == 3:
        lo = 1.7e9 + 3600.0 * float(rng.integers(0, N_VIDEOS))
        return VideoFilter(mtime_min=lo, mtime_max=lo + 3600.0 * float(rng.integers(1, 60)))
    if kind == 4:
        return VideoFilter(duration_min=float(rng.choice([0.0, 3.0, 6.0])), duration_max=float(rng.choice([8.0, 20.0])))
    return VideoFilter(under="/collection/garden", path_glob="*.mp4", duration_min=4.0)


def moments_key(res):
    return [(m.video_id, m.start, m.end) for m in res]


@pytest.mark.slow  # the acceptance test of the backend (200 queries): the whole suite runs it
def test_parity_200_random_queries(both) -> None:
    emb_ix, mv_ix = both
    assert emb_ix.num_live == mv_ix.num_live and emb_ix.num_videos == mv_ix.num_videos
    rng = np.random.default_rng(1)
    compared = 0
    for t in range(200):
        q = rng.standard_normal((1, 512)).astype(np.float32)
        if t % 2:  # near a cluster: many videos with close scores
            q = (emb_ix.windows(int(rng.choice(list(emb_ix.snapshot.records))))[2][0] + 0.5 * q).astype(np.float32)
        neg = rng.standard_normal((int(rng.integers(1, 3)), 512)).astype(np.float32) if t % 5 == 0 else None
        opts = {"k": int(rng.integers(1, 25)), "offset": int(rng.choice([0, 0, 3, 10, 40])),
                "merge": bool(rng.random() > 0.2), "by_video": bool(rng.random() < 0.25),
                "video_filter": random_filter(rng), "neg": neg,
                "not_weight": float(rng.choice([0.5, 1.0, 2.0])), "exclude_videos": [3] if t % 7 == 0 else []}
        try:
            want = emb_ix.search_embeddings(q, exact=True, **opts)[0]
        except NoVideoMatchesError:
            with pytest.raises(NoVideoMatchesError):
                mv_ix.search_embeddings(q, **opts)
            continue
        got = mv_ix.search_embeddings(q, **opts)[0]
        assert moments_key(got) == moments_key(want), (t, opts)
        for g, w in zip(got, want):
            assert math.isclose(g.score, w.score, rel_tol=0, abs_tol=1e-4 * max(1.0, abs(w.score)))
            assert math.isclose(g.cosine, w.cosine, abs_tol=1e-6)
            assert g.percentile == w.percentile and g.peak == w.peak and g.path == w.path
        compared += 1
    assert compared > 150


def test_curves_windows_and_video_moments_match(both) -> None:
    emb_ix, mv_ix = both
    q = np.random.default_rng(2).standard_normal(512).astype(np.float32)
    for vid in (1, 5, 100, N_VIDEOS):
        for a, b in zip(emb_ix.curve(vid, q), mv_ix.curve(vid, q)):
            np.testing.assert_array_equal(a, b)
        assert moments_key(emb_ix.video_moments(vid, q)) == moments_key(mv_ix.video_moments(vid, q))
    with pytest.raises(KeyError):
        mv_ix.windows(9)  # removed
    assert [v.to_dict() for v in emb_ix.videos()] == [v.to_dict() for v in mv_ix.videos()]


@pytest.mark.slow
def test_parity_when_filters_are_rechecked_and_candidates_run_out(both, monkeypatch) -> None:
    """Filters passing more videos than a ``video in [...]`` expression takes are re-checked on
    over-fetched candidates, and a search needing more candidates than Milvus returns at once
    scores every allowed video: the same answers either way."""
    import milnce.index.milvus_query as mq

    monkeypatch.setattr(mq, "EXPR_IDS", 5)
    monkeypatch.setattr(mq, "MAX_TOPK", 64)
    emb_ix, mv_ix = both
    rng = np.random.default_rng(7)
    for t in range(40):
        q = rng.standard_normal((1, 512)).astype(np.float32)
        opts = {"k": int(rng.integers(5, 40)), "offset": int(rng.choice([0, 20, 60])), "by_video": t % 3 == 0,
                "video_filter": random_filter(rng) if t % 4 else VideoFilter(path_glob="v2*"),
                "neg": rng.standard_normal((1, 512)).astype(np.float32) if t % 5 == 0 else None}
        try:
            want = emb_ix.search_embeddings(q, exact=True, **opts)[0]
        except NoVideoMatchesError:
            continue
        got = mv_ix.search_embeddings(q, **opts)[0]
        assert moments_key(got) == moments_key(want), (t, opts)
