"""Atomic file writes: a file milnce writes is either complete or absent, never half-written.

Data goes to a temporary file beside the target (same folder, so the rename stays on one file
system), is flushed and fsync'ed, then renamed over the target; on any error, the interruption
included, the temporary file is removed. Permissions follow the umask like a plain ``open``.

The temporary file is ``{prefix}{pid}.{random}.tmp`` with ``prefix`` ``.NAME.`` by default: two
writers of one target never share a temporary file, and a caller that sweeps the leftovers of
killed processes (``kill -9`` skips every cleanup) gives its own ``prefix`` (e.g. with the host
name) and reads the pid back after it.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from typing import BinaryIO

from .errors import OutputError

__all__ = ["atomic_file", "atomic_path", "atomic_write_bytes", "atomic_write_text", "temp_name", "fsync_dir",
           "TMP_SUFFIX"]

TMP_SUFFIX = ".tmp"


def temp_name(path: str | os.PathLike[str], prefix: str | None = None) -> str:
    """A fresh temporary file name beside ``path``: ``{prefix}{pid}.{random}.tmp``."""
    folder, name = os.path.split(os.fspath(path))
    head = f".{name}." if prefix is None else prefix
    return os.path.join(folder or ".", f"{head}{os.getpid()}.{uuid.uuid4().hex[:8]}{TMP_SUFFIX}")


@contextlib.contextmanager
def _replacing(target: str, tmp: str) -> Iterator[None]:
    """Rename ``tmp`` to ``target`` when the block ends; remove ``tmp`` if it raises (an ``OSError``
    becomes ``OutputError``)."""
    try:
        yield
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, OutputError):
            raise OutputError(target, exc) from exc
        raise


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str], *, prefix: str | None = None) -> Iterator[BinaryIO]:
    """``with atomic_file(path) as f: f.write(...)`` writes ``path`` atomically (binary mode).

    ``prefix``: the start of the temporary file's name (default ``.NAME.``), see the module doc.
    Failing to create, write or rename it (read-only folder, disk full) raises ``OutputError``
    (an ``OSError`` and a ``MilnceError``: one line on the command line)."""
    target = os.fspath(path)
    tmp = temp_name(target, prefix)
    with _replacing(target, tmp), open(tmp, "xb") as f:
        yield f
        f.flush()
        os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, prefix: str | None = None, suffix: str = "") -> Iterator[str]:
    """``with atomic_path(path) as tmp: writer(tmp)`` for writers that take a file name (faiss, PyAV):
    the file written to ``tmp`` is fsync'ed and renamed to ``path`` when the block ends, removed if
    it raises. ``suffix`` is appended to the temporary name (a writer that picks the format by
    extension, e.g. ``.mp4``)."""
    target = os.fspath(path)
    tmp = temp_name(target, prefix) + suffix
    with _replacing(target, tmp):
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, prefix: str | None = None) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_file(path, prefix=prefix) as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str, *, encoding: str = "utf-8",
                      errors: str = "strict", prefix: str | None = None) -> None:
    """Write ``text`` to ``path`` atomically (encoded before anything is created)."""
    atomic_write_bytes(path, text.encode(encoding, errors), prefix=prefix)


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """Make the renames inside ``folder`` durable (best effort: not every file system allows it)."""
    with contextlib.suppress(OSError):
        fd = os.open(os.fspath(folder) or ".", os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
