"""``milnce.atomic``: Atomic file writes."""

from __future__ import annotations

import errno
import os

import pytest

import milnce
import milnce.atomic
import milnce.fast
from milnce.atomic import atomic_file, atomic_write_text
from milnce.errors import OutputError

# --------------------------------------------------------------------------- atomic writes, cache


def test_atomic_prefix_and_output_error(tmp_path, monkeypatch):
    target = tmp_path / "a.bin"
    seen = []
    real_open = open

    def spy(path, mode="r", *a, **kw):
        seen.append(os.path.basename(path))
        return real_open(path, mode, *a, **kw)

    monkeypatch.setattr("builtins.open", spy)
    with atomic_file(target, prefix=".a.bin.host.") as f:
        f.write(b"x")
    monkeypatch.undo()
    assert target.read_bytes() == b"x"
    assert seen[0].startswith(f".a.bin.host.{os.getpid()}.") and seen[0].endswith(".tmp")

    def erofs(*a, **kw):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(milnce.atomic.os, "replace", erofs)
    with pytest.raises(OutputError, match="cannot write .*b.txt: Read-only file system") as info:
        atomic_write_text(tmp_path / "b.txt", "y")
    assert info.value.errno == errno.EROFS
    assert os.listdir(tmp_path) == ["a.bin"]  # no temporary file left
