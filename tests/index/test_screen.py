"""``milnce.index.search``: Exact search over the stored windows."""

from __future__ import annotations

import numpy as np
import pytest

import milnce.index.screen as search_mod
from index_fixtures import CENTRES, ROOT, fake_emb, key, synthetic_index
from milnce.index import Index
from milnce.index.filters import VideoFilter, collection_root


@pytest.mark.slow
@pytest.mark.usefixtures("reuse_model")
def test_screened_exact_search_equals_full_scan(tmp_path):
    """Above 20k windows, exact search scans int8 codes and re-scores every window that could make
    the top k (proven error bound): the results must be those of the full float32 scan."""
    from milnce.index.screen import _HAVE_INT8_KERNEL

    if not _HAVE_INT8_KERNEL():
        pytest.skip("no int8 kernel in this torch: the float32 scan is always used")
    idx = synthetic_index(tmp_path / "ix", videos=45, windows=500, seed=4)
    for v in range(3):  # dead rows must stay invisible to the screened scan
        idx.add_video(f"/nonexistent/v{v:03d}.mp4", fake_emb(500, np.random.default_rng(v)), size=1, mtime=3.0,
                      content_hash="y")
    rng = np.random.default_rng(5)
    q = np.asarray(idx._vectors[rng.choice(idx.num_rows, 12)]) + rng.standard_normal((12, 512)).astype(np.float32)
    for merge, by_video in ((False, False), (True, False), (True, True)):
        a = idx.search_embeddings(q, k=10, merge=merge, by_video=by_video, exact=True)
        b = idx.search_embeddings(q, k=10, merge=merge, by_video=by_video, exact="scan")
        assert [[(m.video_id, m.start, m.end) for m in r] for r in a] == [[(m.video_id, m.start, m.end) for m in r] for r in b]
        np.testing.assert_allclose([m.score for r in a for m in r], [m.score for r in b for m in r], rtol=1e-6)
    idx.close()


@pytest.mark.usefixtures("reuse_model")
def test_k_prefix_through_the_screened_scan(tmp_path):
    """>= 20k windows: the int8-screened exact search gives the same fixed ranking."""
    idx = synthetic_index(tmp_path / "ix", videos=42, windows=500, seed=2)
    rng = np.random.default_rng(9)
    q = np.asarray(idx._vectors[1234]) + 0.2 * rng.standard_normal(512).astype(np.float32)
    ref = idx.search_embeddings(q, k=60, exact="scan")[0]
    for k in (1, 10, 25, 60):
        assert [key(m) for m in idx.search_embeddings(q, k=k, exact=True)[0]] == [key(m) for m in ref[:k]]
    idx.close()


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
