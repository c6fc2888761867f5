"""Atomic file writes: a file milnce writes is either complete or absent, never half-written.

Data goes to a temporary file beside the target (same folder, so the rename stays on one file
system), is flushed and fsync'ed, then renamed over the target; on any error, the interruption
included, the temporary file is removed. Permissions follow the umask like a plain ``open``.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from typing import BinaryIO

__all__ = ["atomic_file", "atomic_write_bytes"]


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """``with atomic_file(path) as f: f.write(...)`` writes ``path`` atomically (binary mode)."""
    target = os.fspath(path)
    folder, name = os.path.split(target)
    tmp = os.path.join(folder or ".", f".{name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_file(path) as f:
        f.write(data)
