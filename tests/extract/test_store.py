"""``milnce.extract.store``: Feature files."""

from __future__ import annotations

import numpy as np
import pytest

from milnce.extract import (
    extract,
    read_feature_file,
)
from milnce.extract.store import inspect_meta
from milnce.video.result import EmbeddingsFileError, VideoWindows
from video_fixtures import SMALL_WINDOWS as S
from video_fixtures import write_feature_stub, write_features


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


def test_similarity_style_reader_rejects_crafted_meta(tmp_path):
    from milnce.extract import StoreError, read_feature_file, read_meta

    (tmp_path / "v.mp4").write_bytes(b"v")
    f = write_features(tmp_path, "x.npz", tmp_path / "v.mp4", source=["/etc/passwd"])
    assert read_meta(str(f)) is None  # extract redoes it instead of failing on it
    with pytest.raises(StoreError, match=r"x\.npz.*meta\.source"):
        read_feature_file(f)
    with pytest.raises(EmbeddingsFileError, match=r"x\.npz.*meta\.source"):
        VideoWindows.load(f)
