"""``milnce.index.ann_pq``: An approximate index for stores past one machine's memory."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import milnce.index.screen as search_mod
from index_fixtures import CENTRES as BIG_CENTRES
from milnce.index import Index
from milnce.index.filters import VideoFilter
from milnce.windows import WindowSettings

faiss = pytest.importorskip("faiss")

import milnce.index.ann_pq as ann_pq  # noqa: E402
from milnce.errors import UsageError  # noqa: E402
from milnce.index.ann import candidates_for, open_ann  # noqa: E402
from milnce.index.ann_pq import (  # noqa: E402
    DEFAULT_NPROBE,
    DEFAULT_RERANK,
    LISTS_FILE,
    PQIndexError,
    PQParams,
    build_pq,
    build_threads,
    choose_pq_params,
    open_pq,
    search_pq,
)
from milnce.index.ingest import finish  # noqa: E402
from milnce.index.records import IndexReport  # noqa: E402

D = 64


def clustered(n: int, seed: int = 0, clusters: int = 50, spread: float = 0.6) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((clusters, D)).astype(np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    lab = rng.integers(clusters, size=n)
    return (c[lab] + rng.standard_normal((n, D)).astype(np.float32) * spread / np.sqrt(D)).astype(np.float32)


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

W = WindowSettings(fps=10.0, num_frames=8, size=32, stride=4)
CENTRES = np.random.default_rng(7).standard_normal((10, 512)).astype(np.float32)


def _build(d: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    idx = Index.create_for(d, "w1", W)
    for i in range(12):
        c = CENTRES[rng.integers(0, len(CENTRES), size=500)]
        emb = (c + 0.8 * rng.standard_normal((500, 512))).astype(np.float32)
        starts = np.arange(500, dtype=np.float64) * 0.4
        idx.add_video(f"/media/v{i}.mp4", SimpleNamespace(starts=starts, ends=starts + 0.8, embeddings=emb,
                                                          duration=200.8), size=100 + i, mtime=1.0, content_hash="")
    finish(idx, IndexReport(str(d)), prune=False, ann="pq", ann_min_windows=0, progress=False, queries=lambda: None)
    assert idx.ann_status()["state"] == "ok"
    idx.close()
    return d


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path]:
    faiss.omp_set_num_threads(1)
    base = tmp_path_factory.mktemp("pqint")
    return _build(base / "a", 1), _build(base / "b", 2)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _pq_dir(d: Path) -> Path:
    return next(d.glob("ann-*.pq"))


def _key(ms):
    return [(m.video_id, round(m.start, 3)) for m in ms]


def _answers_exactly(d: Path, caplog) -> dict:
    q = CENTRES[3] + 0.3 * CENTRES[5]
    with caplog.at_level(logging.WARNING, logger="milnce.index"), Index.open(d) as ix:
        st = ix.ann_status()
        got = ix.search_embeddings(q, 10, merge=False)[0]
        exact = ix.search_embeddings(q, 10, merge=False, exact=True)[0]
        assert ix.ann() is None and _key(got) == _key(exact) and len(got) == 10
    assert "damaged" in caplog.text and "searching exactly" in caplog.text
    assert all(len(r.getMessage().splitlines()) == 1 for r in caplog.records)
    return st


@pytest.mark.slow
def test_intact_index_passes_its_checks(pair):
    a, _ = pair
    with Index.open(a) as ix:
        assert ix.ann_status()["state"] == "ok" and ix.ann() is not None
        assert isinstance(ix.meta["ann"]["meta_crc32"], int)
    assert (_pq_dir(a) / "lists.crc").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("how", ["0xff", "flip", "foreign"])
def test_damaged_lists_fall_back_to_exact(pair, tmp_path, caplog, how):
    a, b = pair
    d = _copy(a, tmp_path / "ix")
    lists = _pq_dir(d) / "lists.ivfdata"
    if how == "0xff":
        lists.write_bytes(b"\xff" * lists.stat().st_size)
    elif how == "flip":
        raw = bytearray(lists.read_bytes())
        for i in np.random.default_rng(0).choice(len(raw), 2000, replace=False):
            raw[i] ^= 0xFF
        lists.write_bytes(bytes(raw))
    else:  # another index's folder with the same row count, copied in whole (its own pq.json too)
        shutil.rmtree(_pq_dir(d))
        shutil.copytree(_pq_dir(b), d / _pq_dir(a).name)
    st = _answers_exactly(d, caplog)
    assert st["state"] == "damaged" and st["reason"]


@pytest.mark.slow
def test_foreign_index_without_recorded_checksum_is_caught_by_the_cross_check(pair, tmp_path, caplog):
    """An index built before ``meta_crc32`` was recorded: the copied folder is self-consistent, so
    only stored rows searched through it (their own row must come back) show it is foreign."""
    a, b = pair
    d = _copy(a, tmp_path / "ix")
    name = _pq_dir(a).name
    shutil.rmtree(d / name)
    shutil.copytree(_pq_dir(b), d / name)
    _edit_ann(d, lambda info: info.pop("meta_crc32"))
    st = _answers_exactly(d, caplog)
    assert st["state"] == "damaged" and "found themselves" in st["reason"]


@pytest.mark.slow
def test_damage_found_lazily_by_a_search(pair, tmp_path, caplog, monkeypatch):
    """Lists files above ``VERIFY_AT_OPEN_BYTES`` are checked list by list as searches probe them."""
    a, _ = pair
    d = _copy(a, tmp_path / "ix")
    monkeypatch.setattr(ann_pq, "VERIFY_AT_OPEN_BYTES", 0)
    q = CENTRES[3] + 0.3 * CENTRES[5]
    with caplog.at_level(logging.WARNING, logger="milnce.index"), Index.open(d) as ix:
        assert ix.ann_status()["state"] == "ok"
        pq = ix.ann()
        pq.checked.clear()
        lists = _pq_dir(d) / "lists.ivfdata"
        with open(lists, "r+b") as f:  # the memory map sees it
            f.write(b"\xff" * lists.stat().st_size)
        exact = ix.search_embeddings(q, 10, merge=False, exact=True)[0]
        got = ix.search_embeddings(q, 10, merge=False)[0]
        assert _key(got) == _key(exact)
        assert ix.ann_status()["state"] == "damaged" and ix.ann() is None
    assert caplog.text.count("is damaged") == 1


def _edit_ann(d: Path, change) -> None:
    con = sqlite3.connect(d / "index.sqlite")
    info = json.loads(con.execute("SELECT value FROM meta WHERE key='ann'").fetchone()[0])
    change(info)
    con.execute("UPDATE meta SET value=? WHERE key='ann'", (json.dumps(info),))
    con.commit()
    con.close()


@pytest.mark.slow
@pytest.mark.parametrize("field, value, words", [
    ("file", "../other/ann-0-6000.pq", "not a name inside"),
    ("file", "/etc/ann-0-6000.pq", "not a name inside"),
    ("nprobe", -5, "nprobe"),
    ("nprobe", "16", "nprobe"),
    ("nprobe", True, "nprobe"),
])


def test_ann_entry_cannot_point_outside(pair, tmp_path, caplog, field, value, words):
    a, _ = pair
    d = _copy(a, tmp_path / "ix")
    other = tmp_path / "other"
    shutil.copytree(_pq_dir(a), other / _pq_dir(a).name)
    _edit_ann(d, lambda info: info.__setitem__(field, value))
    st = _answers_exactly(d, caplog)
    assert st["state"] == "damaged" and words in st["reason"]


@pytest.mark.slow
def test_symlinked_pq_folder_is_refused(pair, tmp_path, caplog):
    a, _ = pair
    d = _copy(a, tmp_path / "ix")
    name = _pq_dir(d).name
    os.rename(d / name, tmp_path / "elsewhere")
    os.symlink(tmp_path / "elsewhere", d / name)
    st = _answers_exactly(d, caplog)
    assert st["state"] == "damaged" and "symbolic link" in st["reason"]


@pytest.mark.slow
def test_pq_json_naming_other_files_is_refused(pair, tmp_path):
    a, _ = pair
    folder = _copy(_pq_dir(a), tmp_path / "pq")
    meta = json.loads((folder / "pq.json").read_text())
    meta["bytes"]["../../etc/passwd"] = 1
    (folder / "pq.json").write_text(json.dumps(meta))
    with pytest.raises(ann_pq.PQDamagedError, match="other files"):
        ann_pq.open_pq(folder)
    with pytest.raises(ann_pq.UsageError, match="nprobe"):
        ann_pq.open_pq(_pq_dir(a), nprobe=-5)


@pytest.mark.slow
def test_rebuild_never_removes_what_a_crafted_entry_names(pair, tmp_path):
    """``milnce index --ann pq`` removes the previous ANN folder: never one a crafted entry names
    outside the index."""
    a, _ = pair
    d = _copy(a, tmp_path / "ix")
    victim = tmp_path / "victim"
    (victim / "keep").mkdir(parents=True)
    _edit_ann(d, lambda info: info.__setitem__("file", "../victim"))
    with Index.open(d, readonly=False) as w:
        assert w.ann_status()["state"] == "damaged"
        w.build_ann(kind="pq")
        assert w.ann_status()["state"] == "ok"
    assert (victim / "keep").is_dir()


@pytest.mark.slow
def test_index_ann_pq_is_recorded_and_searched(big, tmp_path, model, monkeypatch, capsys):
    """``--ann pq``: the IVF-PQ folder is built over the live rows, recorded in the index meta,
    opened by searches (candidates re-scored exactly), refilled under a filter, and replaced by
    ``--ann`` (ivf) when asked."""
    faiss = pytest.importorskip("faiss")
    import shutil

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
        q = BIG_CENTRES[3] + 0.2 * BIG_CENTRES[4]
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
        assert index.search_embeddings(BIG_CENTRES[3], 5)[0]


# ----- recall and re-scoring ---------------------------------------------------------------------

N = 20000
COARSE = PQParams(nlist=64, m=8, nbits=6)  # trains in seconds; coarse codes, so re-scoring matters


def wide_clusters(n: int, seed: int) -> np.ndarray:
    """Members of a few wide clusters: near-equidistant from a query, hard for 6-bit PQ8."""
    return clustered(n, seed, clusters=40, spread=0.7)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    d = tmp_path_factory.mktemp("pqrecall")
    np.save(d / "v.npy", wide_clusters(N, 0))
    x = np.load(d / "v.npy", mmap_mode="r")
    before = faiss.omp_get_max_threads()
    meta = build_pq(x, d / "pq", params=COARSE, train_size=8000, threads=2)
    assert faiss.omp_get_max_threads() == before  # the caller's thread count is restored
    return d, x, meta


def recall(rows: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(r) & set(t)) / truth.shape[1] for r, t in zip(rows.tolist(), truth.tolist())]))


@pytest.mark.slow
def test_default_rescore_beats_the_old_path_and_matches_exact(built):
    d, x, meta = built
    assert meta["threads"] == 2 and meta["add_s"] >= 0
    q = wide_clusters(100, 7)
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
    rows, _ = search_pq(ix, x, wide_clusters(3, 9), 10)
    assert (rows >= 0).all()
    ix, state = open_ann(str(tmp_path), {**info, "rerank": 1500}, 1, D)
    assert state["state"] == "ok" and ix.rerank == 1500 and ix.candidates(10) == 1500
    for bad in (0, "many", True):
        ix, state = open_ann(str(tmp_path), {**info, "rerank": bad}, 1, D)
        assert ix is None and state["state"] == "damaged" and "rerank" in state["reason"]
