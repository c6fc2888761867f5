"""Crafted feature files (duration -5 or 1e308, source.size -1, a NUL in the source path) are
refused per file by the one reader, listed as failed with the reason (issue 25 items 14/15)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from milnce.cli import main
from milnce.extract.store import FORMAT, inspect_meta, read_feature_file, write_feature_file
from milnce.video.result import EmbeddingsFileError, VideoWindows
from milnce.windows import WindowSettings

W = WindowSettings(fps=10.0, num_frames=8, size=32, stride=4)


def _file(path: Path, source: Path, *, duration: float = 2.0, meta_duration: float | None = None,
          size: int | None = None, src_path: str | None = None) -> None:
    rng = np.random.default_rng(0)
    starts = np.arange(4, dtype=np.float64) * 0.4
    meta = {"format": FORMAT, "settings": {**W.to_dict(), "start": None, "end": None, "pad": "repeat"},
            "weights": "w1", "precision": "fp32",
            "source": {"path": src_path if src_path is not None else str(source),
                       "size": 10 if size is None else size, "mtime_ns": 1_000_000_000}}
    if meta_duration is not None:
        meta["duration"] = meta_duration
    write_feature_file(str(path), {"video_embedding": rng.standard_normal((4, 512)).astype(np.float32),
                                   "start": starts, "end": starts + 0.8, "duration": np.asarray(duration)}, meta)


@pytest.mark.parametrize("kw, words", [
    ({"meta_duration": -5.0}, "meta.duration"),
    ({"meta_duration": 1e308}, "meta.duration"),
    ({"size": -1}, "meta.source.size"),
    ({"src_path": "/media/a\0b.mp4"}, "meta.source.path"),
])
def test_meta_refused_by_the_reader(tmp_path, kw, words):
    _file(tmp_path / "f.npz", tmp_path / "v.mp4", **kw)
    meta, why = inspect_meta(str(tmp_path / "f.npz"))
    assert meta is None and words in why
    with pytest.raises(Exception, match=words.replace(".", r"\.")):
        read_feature_file(tmp_path / "f.npz")


@pytest.mark.parametrize("duration", [-5.0, 1e308, float("inf")])
def test_duration_member_refused(tmp_path, duration):
    _file(tmp_path / "f.npz", tmp_path / "v.mp4", duration=duration)
    with pytest.raises(EmbeddingsFileError, match="duration"):
        VideoWindows.load(tmp_path / "f.npz")


def test_index_from_features_lists_crafted_files_as_failed(tmp_path, capsys):
    feats, vids = tmp_path / "features", tmp_path / "videos"
    vids.mkdir()
    _file(feats / "ok.npz", vids / "ok.mp4")
    _file(feats / "neg.npz", vids / "neg.mp4", meta_duration=-5.0)
    _file(feats / "huge.npz", vids / "huge.mp4", duration=1e308)  # the array member, not the meta
    _file(feats / "size.npz", vids / "size.mp4", size=-1)
    _file(feats / "nul.npz", vids / "nul.mp4", src_path=str(vids / "a\0b.mp4"))
    rc = main(["index", "--from-features", str(feats), "--index", str(tmp_path / "ix"), "--root", str(vids),
               "--json"])
    out, err = capsys.readouterr()
    rep = json.loads(out)
    assert rc == 1 and [Path(p).name for p in rep["added"]] == ["ok.mp4"]
    failed = {Path(p).name: why for p, why in rep["failed"]}
    assert len(failed) == 4 and "Traceback" not in err and "\0" not in err
    assert "duration" in failed["huge.mp4"] and "video-h" not in err.split("\n")[-1]
    assert os.path.isdir(tmp_path / "ix")


def test_plain_npy_with_a_huge_header_is_refused_before_allocating(tmp_path):
    """A 200-byte ``.npy`` whose header claims (1e11, 512): the one feature-file reader checks the
    header against the file size (``milnce.video.npyfile``) before ``np.load`` would allocate it."""
    p = tmp_path / "clip.npy"
    with open(p, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (10**11, 512)})
        f.write(b"\0" * 64)
    with pytest.raises(EmbeddingsFileError, match="its header says shape"):
        VideoWindows.load(p)
    np.save(tmp_path / "ok.npy", np.ones((3, 512), np.float32))
    assert VideoWindows.load(tmp_path / "ok.npy").embeddings.shape == (3, 512)
