"""``milnce.extract.store``: Feature files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from milnce.extract import (
    extract,
    read_feature_file,
)
from milnce.extract.store import FORMAT, inspect_meta, write_feature_file
from milnce.video.result import EmbeddingsFileError, VideoWindows
from milnce.windows import WindowSettings
from video_fixtures import SMALL_WINDOWS as S
from video_fixtures import write_feature_stub


def test_disk_full_is_a_clear_error_and_leaves_nothing_partial(model, tree, tmp_path, monkeypatch):
    import errno

    from milnce.extract import StoreError, store

    out = tmp_path / "full"
    real = np.savez

    def full(f, **arrays):
        f.write(b"PK\x03\x04partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store.np, "savez", full)
    with pytest.raises(StoreError, match="No space left"):
        extract([tree / "good" / "a.mp4"], out, model, S, workers=0)
    assert [p.name for p in out.iterdir()] == ["failures.csv"]  # no .npz, no temporary file
    monkeypatch.setattr(store.np, "savez", real)
    assert extract([tree / "good" / "a.mp4"], out, model, S, workers=0).extracted == 1
    (out / "a.npz").write_bytes(b"garbage")
    with pytest.raises(StoreError, match="a.npz"):
        read_feature_file(out / "a.npz")
    assert extract([tree / "good" / "a.mp4"], out, model, S, workers=0).redone == 1  # damaged: redone

W = WindowSettings(fps=10.0, num_frames=8, size=32, stride=4)


@pytest.mark.parametrize("kw, words", [
    ({"meta_duration": -5.0}, "meta.duration"),
    ({"meta_duration": 1e308}, "meta.duration"),
    ({"size": -1}, "meta.source.size"),
    ({"src_path": "/media/a\0b.mp4"}, "meta.source.path"),
])
def test_meta_refused_by_the_reader(tmp_path, kw, words):
    write_feature_stub(tmp_path / "f.npz", tmp_path / "v.mp4", **kw)
    meta, why = inspect_meta(str(tmp_path / "f.npz"))
    assert meta is None and words in why
    with pytest.raises(Exception, match=words.replace(".", r"\.")):
        read_feature_file(tmp_path / "f.npz")


# ----- gap 1: six (and more) malformed --from-features inputs ---------------------------------


def _features(folder: Path, name: str, video: Path, *, arrays: dict | None = None, **meta_over) -> Path:

    rng = np.random.default_rng(0)
    emb = rng.standard_normal((4, 512)).astype(np.float32)
    s = np.arange(4, dtype=np.float64) * 0.4
    st = os.stat(video)
    meta = {"format": FORMAT, "settings": {**W.to_dict(), "start": None, "end": None, "pad": "repeat"},
            "weights": "w1", "precision": "fp32",
            "source": {"path": str(video), "size": st.st_size, "mtime_ns": st.st_mtime_ns}}
    meta.update(meta_over)
    data = {"video_embedding": emb, "start": s, "end": s + 0.8, "duration": np.asarray(2.0)}
    for k, v in (arrays or {}).items():
        if v is None:
            del data[k]
        else:
            data[k] = v
    target = folder / name
    write_feature_file(str(target), data, meta)
    return target


def test_similarity_style_reader_rejects_crafted_meta(tmp_path):
    from milnce.extract import StoreError, read_feature_file, read_meta

    (tmp_path / "v.mp4").write_bytes(b"v")
    f = _features(tmp_path, "x.npz", tmp_path / "v.mp4", source=["/etc/passwd"])
    assert read_meta(str(f)) is None  # extract redoes it instead of failing on it
    with pytest.raises(StoreError, match=r"x\.npz.*meta\.source"):
        read_feature_file(f)
    with pytest.raises(EmbeddingsFileError, match=r"x\.npz.*meta\.source"):
        VideoWindows.load(f)
