"""``milnce.index.ann_pq``: IVF-PQ with an HNSW quantizer and on-disk lists, on a small store."""

from __future__ import annotations

import os

import numpy as np
import pytest

faiss = pytest.importorskip("faiss")

from milnce.errors import UsageError  # noqa: E402
from milnce.index.ann_pq import (  # noqa: E402
    LISTS_FILE,
    PQIndexError,
    PQParams,
    build_pq,
    choose_pq_params,
    open_pq,
    search_pq,
)

D = 64


def clustered(n: int, seed: int = 0, clusters: int = 50) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((clusters, D)).astype(np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    lab = rng.integers(clusters, size=n)
    return (c[lab] + rng.standard_normal((n, D)).astype(np.float32) * 0.6 / np.sqrt(D)).astype(np.float32)


SMALL = PQParams(nlist=32, m=8, nbits=6)  # 64 centroids per sub-quantizer: trains in a fraction of a second


def one_thread():
    """faiss shares torch's OpenMP pool (conftest sets 2 threads); its threads spin, and on a
    loaded 2-core machine one thread builds several times faster."""
    faiss.omp_set_num_threads(1)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    d = tmp_path_factory.mktemp("pq")
    one_thread()
    x = clustered(12000)
    np.save(d / "v.npy", x)
    xm = np.load(d / "v.npy", mmap_mode="r")
    ids = np.arange(len(x), dtype=np.int64) + 5  # store rows need not start at 0
    meta = build_pq(xm, d / "pq", params=SMALL, ids=ids, block=5000, train_size=4000)
    return d, xm, meta


def test_choose_params_rule():
    p = choose_pq_params(2_000_000)
    assert (p.nlist, p.m) == (2048, 64)
    p = choose_pq_params(100_000_000)
    assert (p.nlist, p.m) == (16384, 32)
    assert choose_pq_params(100_000).nlist == 512 and choose_pq_params(1000).nlist == 16
    assert choose_pq_params(10_000, dim=96).m == 32  # divides the dimension
    with pytest.raises(UsageError):
        choose_pq_params(0)


def test_search_recall_against_exact(store):
    d, xm, meta = store
    assert meta["ntotal"] == 12000 and sorted(os.listdir(d / "pq")) == ["index.faiss", "lists.crc", "lists.ivfdata",
                                                                     "pq.json"]
    pq = open_pq(d / "pq", nprobe=16)
    q = clustered(50, seed=9)
    # the ids are store rows 5..12004; the re-scoring reads vectors[row], so pad 5 rows in front
    vec = np.concatenate([np.zeros((5, D), np.float32), np.asarray(xm)])
    rows, scores = search_pq(pq, vec, q, 10)
    exact = q @ vec.T
    truth = np.argsort(-exact, axis=1, kind="stable")[:, :10]
    recall = np.mean([len(set(r) & set(t)) / 10 for r, t in zip(rows.tolist(), truth.tolist())])
    assert recall >= 0.85, recall  # 6-bit PQ8 on near-equidistant cluster members: a hard, tiny case
    pq.set_nprobe(32)  # every list, every row re-scored: exactly the exact top 10
    rows_all, _ = search_pq(pq, vec, q, 10, rerank=len(vec))
    assert rows_all.tolist() == truth.tolist()
    assert np.allclose(scores, np.take_along_axis(exact, rows, 1), atol=1e-5)  # exact re-scores
    assert (np.diff(scores, axis=1) <= 0).all()


def test_existing_or_invalid_targets_are_refused(store, tmp_path):
    d, xm, _ = store
    with pytest.raises(PQIndexError, match="exists"):
        build_pq(xm, d / "pq", params=SMALL)
    with pytest.raises(UsageError, match="divide"):
        build_pq(xm, tmp_path / "x", params=PQParams(nlist=32, m=7))
    with pytest.raises(UsageError, match="too few"):
        build_pq(xm[:100], tmp_path / "x", params=PQParams(nlist=32, m=8))
    assert not os.listdir(tmp_path)


def test_failed_build_leaves_nothing(store, tmp_path, monkeypatch):
    _, xm, _ = store
    real = faiss.write_index
    calls = []

    def full_disk(ix, name):  # ENOSPC on the second write (a shard)
        calls.append(name)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(ix, name)

    monkeypatch.setattr(faiss, "write_index", full_disk)
    one_thread()
    with pytest.raises(OSError, match="No space"):
        build_pq(xm, tmp_path / "pq", params=SMALL, block=5000, train_size=4000)
    assert os.listdir(tmp_path) == []


def test_damaged_folders_are_clear_errors(store, tmp_path):
    d, _, _ = store
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(d / "pq", bad)
    with open(bad / LISTS_FILE, "r+b") as f:
        f.truncate(100)
    with pytest.raises(PQIndexError, match="another size"):
        open_pq(bad)
    (bad / "pq.json").write_text("{not json")
    with pytest.raises(PQIndexError, match="not a PQ index"):
        open_pq(bad)
    with pytest.raises(PQIndexError, match="not a PQ index"):
        open_pq(tmp_path / "nothing")
