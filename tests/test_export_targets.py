"""``milnce.export.check_targets``: the files an ONNX export writes, refused when they are there
already (unless overwrite), before any weights load."""

from __future__ import annotations

import pytest

from milnce.errors import UsageError
from milnce.export import check_targets


def test_the_files_each_tower_writes(tmp_path):
    prefix = tmp_path / "s3d.onnx"
    assert [p.name for p in check_targets(prefix)] == ["s3d.video.onnx", "s3d.text.onnx", "s3d.vocab.npy"]
    assert [p.name for p in check_targets(prefix, text=False)] == ["s3d.video.onnx"]
    assert [p.name for p in check_targets(prefix, video=False)] == ["s3d.text.onnx", "s3d.vocab.npy"]


def test_existing_files_refused_unless_overwrite(tmp_path):
    (tmp_path / "s3d.vocab.npy").write_bytes(b"")
    check_targets(tmp_path / "s3d", text=False)  # only the video graph: the vocabulary is not written
    with pytest.raises(UsageError, match=r"s3d\.vocab\.npy already exist\(s\); pass --overwrite"):
        check_targets(tmp_path / "s3d", video=False)
    assert check_targets(tmp_path / "s3d", overwrite=True)[2].name == "s3d.vocab.npy"


def test_a_prefix_without_a_name_is_refused(tmp_path):
    with pytest.raises(UsageError, match="needs a file name prefix"):
        check_targets(str(tmp_path) + "/..")
