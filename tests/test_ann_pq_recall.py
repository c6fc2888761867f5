"""IVF-PQ recall: more candidates re-scored exactly (``rerank``), more lists probed by default,
rows added to their nearest list, the build on several threads; an index built before opens."""

from __future__ import annotations

import numpy as np
import pytest

faiss = pytest.importorskip("faiss")

from milnce.errors import UsageError  # noqa: E402
from milnce.index.ann import candidates_for, open_ann  # noqa: E402
from milnce.index.ann_pq import (  # noqa: E402
    DEFAULT_NPROBE,
    DEFAULT_RERANK,
    PQParams,
    build_pq,
    build_threads,
    open_pq,
    search_pq,
)

D = 64
N = 20000
SMALL = PQParams(nlist=64, m=8, nbits=6)  # trains in seconds; coarse codes, so re-scoring matters


def clustered(n: int, seed: int, clusters: int = 40) -> np.ndarray:
    """Members of a few wide clusters: near-equidistant from a query, hard for 6-bit PQ8."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((clusters, D)).astype(np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    lab = rng.integers(clusters, size=n)
    return (c[lab] + rng.standard_normal((n, D)).astype(np.float32) * 0.7 / np.sqrt(D)).astype(np.float32)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    d = tmp_path_factory.mktemp("pqrecall")
    np.save(d / "v.npy", clustered(N, 0))
    x = np.load(d / "v.npy", mmap_mode="r")
    before = faiss.omp_get_max_threads()
    meta = build_pq(x, d / "pq", params=SMALL, train_size=8000, threads=2)
    assert faiss.omp_get_max_threads() == before  # the caller's thread count is restored
    return d, x, meta


def recall(rows: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(r) & set(t)) / truth.shape[1] for r, t in zip(rows.tolist(), truth.tolist())]))


def test_default_rescore_beats_the_old_path_and_matches_exact(built):
    d, x, meta = built
    assert meta["threads"] == 2 and meta["add_s"] >= 0
    q = clustered(100, 7)
    exact = q @ np.asarray(x).T
    truth = np.argsort(-exact, axis=1, kind="stable")[:, :10]
    pq = open_pq(d / "pq")  # the defaults: nprobe DEFAULT_NPROBE (all 64 lists here), rerank DEFAULT_RERANK
    assert pq.rerank == DEFAULT_RERANK and faiss.extract_index_ivf(pq.index).nprobe == min(DEFAULT_NPROBE, 64)
    rows, scores = search_pq(pq, x, q, 10)
    old = open_pq(d / "pq", nprobe=32, rerank=400)  # the parameters before: nprobe 32, max(4k, 400)
    old_rows, _ = search_pq(old, x, q, 10)
    new_r, old_r = recall(rows, truth), recall(old_rows, truth)
    assert new_r >= old_r and new_r >= 0.97, (new_r, old_r)
    # exact scores of the rows returned (float32 products: a matrix-vector and a matrix-matrix
    # product may round the last bit differently), and the exact top-1 wherever it is found
    np.testing.assert_allclose(scores, np.take_along_axis(exact, rows, 1), rtol=0, atol=1e-5)
    found = np.array([truth[i, 0] in rows[i] for i in range(len(q))])
    assert found.mean() >= 0.97
    assert (rows[found, 0] == truth[found, 0]).all()
    # every row re-scored: the exact top 10, ties by row
    rows_all, _ = search_pq(pq, x, q, 10, rerank=N)
    assert recall(rows_all, truth) == 1.0


def test_rows_go_to_their_nearest_list(built):
    d, x, _ = built
    pq = open_pq(d / "pq")  # kept: the IVF view below points into it
    ivf = faiss.extract_index_ivf(pq.index)
    centroids = ivf.quantizer.reconstruct_n(0, ivf.nlist)
    nearest = np.argmax(np.asarray(x) @ centroids.T, axis=1)
    placed = np.empty(N, np.int64)
    inv = ivf.invlists
    for no in range(ivf.nlist):
        n = inv.list_size(no)
        placed[faiss.rev_swig_ptr(inv.get_ids(no), n).copy()] = no
    assert (placed == nearest).mean() >= 0.999  # float ties aside, exactly the nearest centroid


def test_rerank_and_threads_are_checked(built):
    d, x, _ = built
    pq = open_pq(d / "pq", rerank=50)
    assert pq.candidates(10) == 50 and pq.candidates(100) == 400 and candidates_for(pq, 10) == 50
    assert candidates_for(faiss.IndexFlatIP(D), 10) == 400  # an IVF (SQ8) index: as before
    for bad in (0, -1, True, 1.5, 1 << 21):
        with pytest.raises(UsageError, match="rerank"):
            pq.set_rerank(bad)  # type: ignore[arg-type]
    for bad in (0, True, 2.0):
        with pytest.raises(UsageError, match="threads"):
            build_threads(bad)  # type: ignore[arg-type]
    assert build_threads(None) >= 1 and build_threads(3) == 3


def test_index_built_before_opens_with_the_defaults(built, tmp_path):
    """An ANN record written before ``rerank`` was recorded opens and answers; a bad one is damaged."""
    import shutil

    d, x, meta = built
    shutil.copytree(d / "pq", tmp_path / "ann-1-20000.pq")
    info = {"file": "ann-1-20000.pq", "format": "pq", "generation": 1, "nprobe": 32, "live": N, "rows": N}
    ix, state = open_ann(str(tmp_path), info, 1, D)
    assert state["state"] == "ok" and state["rerank"] == DEFAULT_RERANK and ix.rerank == DEFAULT_RERANK
    rows, _ = search_pq(ix, x, clustered(3, 9), 10)
    assert (rows >= 0).all()
    ix, state = open_ann(str(tmp_path), {**info, "rerank": 1500}, 1, D)
    assert state["state"] == "ok" and ix.rerank == 1500 and ix.candidates(10) == 1500
    for bad in (0, "many", True):
        ix, state = open_ann(str(tmp_path), {**info, "rerank": bad}, 1, D)
        assert ix is None and state["state"] == "damaged" and "rerank" in state["reason"]
