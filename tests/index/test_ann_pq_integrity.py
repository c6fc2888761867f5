"""A damaged or foreign IVF-PQ folder is detected (checksums recorded at build, checked at open or
per probed list; stored rows must find themselves through it) and searches fall back to exact;
the recorded ANN entry cannot point outside the index (issue 25 item 8)."""

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

faiss = pytest.importorskip("faiss")

import milnce.index.ann_pq as ann_pq  # noqa: E402
from milnce.index import Index  # noqa: E402
from milnce.index.ingest import finish  # noqa: E402
from milnce.index.records import IndexReport  # noqa: E402
from milnce.windows import WindowSettings  # noqa: E402

W = WindowSettings(fps=10.0, num_frames=8, size=32, stride=4)
CENTRES = np.random.default_rng(7).standard_normal((10, 512)).astype(np.float32)

pytestmark = pytest.mark.slow  # builds a PQ index per module (13 s): the full suite runs it, the quick loop not


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


def test_intact_index_passes_its_checks(pair):
    a, _ = pair
    with Index.open(a) as ix:
        assert ix.ann_status()["state"] == "ok" and ix.ann() is not None
        assert isinstance(ix.meta["ann"]["meta_crc32"], int)
    assert (_pq_dir(a) / "lists.crc").is_file()


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


def test_symlinked_pq_folder_is_refused(pair, tmp_path, caplog):
    a, _ = pair
    d = _copy(a, tmp_path / "ix")
    name = _pq_dir(d).name
    os.rename(d / name, tmp_path / "elsewhere")
    os.symlink(tmp_path / "elsewhere", d / name)
    st = _answers_exactly(d, caplog)
    assert st["state"] == "damaged" and "symbolic link" in st["reason"]


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
