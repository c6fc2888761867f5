"""The cache folder and its small locked JSON stores (below ``weights``, ``integrity``, ``download``).

- :func:`cache_dir`: ``$MILNCE_HOME`` (default ``~/.cache/milnce``), where downloads, the
  record of their checksums (``checksums.json``) and the verdicts of verified loads
  (``verified.json``) live;
- :func:`locked`: an exclusive advisory lock on ``NAME.lock`` beside a file (a no-op where
  ``fcntl`` is missing), so that two processes never interleave a read-modify-write;
- :class:`JsonStore`: one JSON object in a file, read leniently (a missing or damaged file is
  empty) and updated under the lock with an atomic replace (``milnce.atomic``);
- :func:`file_stamp`: what identifies an unchanged file (size, mtime, ctime, inode). ctime is
  set by the kernel on every write and cannot be put back by ``os.utime``, so an in-place
  edit with the old mtime restored still changes the stamp.

Nothing here knows about checkpoints or URLs; the modules above give the stores their meaning.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .atomic import atomic_write_text

__all__ = ["cache_dir", "locked", "JsonStore", "file_stamp", "sha256_file", "crc32_file"]

logger = logging.getLogger("milnce.cache")


def cache_dir() -> Path:
    """The cache folder: ``$MILNCE_HOME`` or ``~/.cache/milnce`` (created if possible)."""
    env = os.environ.get("MILNCE_HOME")
    path = Path(env).expanduser() if env else Path.home() / ".cache" / "milnce"
    with contextlib.suppress(OSError):  # a read-only home fails later, with the file's path
        path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def locked(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive lock on ``path.lock`` (no-op where ``fcntl`` is missing)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    p = Path(path)
    lock_path = p.with_name(p.name + ".lock")
    with open(lock_path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.warning("waiting for another process to finish %s", p.name)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class JsonStore:
    """A JSON object in ``path``: ``read()`` never fails, ``put``/``update`` lock, merge and replace
    atomically. With ``max_entries``, the oldest entries (insertion order) are dropped past it."""

    def __init__(self, path: str | os.PathLike[str], *, max_entries: int | None = None, indent: int = 2,
                 sort_keys: bool = True) -> None:
        self.path = Path(path)
        self.max_entries = max_entries
        self._indent = indent
        self._sort_keys = sort_keys

    def read(self) -> dict[str, Any]:
        """The stored object; ``{}`` when the file is missing, unreadable or not a JSON object."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def get(self, key: str) -> Any:
        return self.read().get(key)

    def put(self, key: str, value: Any) -> None:
        """Set ``key`` (moved to the newest position) under the lock; ``OSError`` if it cannot write."""
        with locked(self.path):
            data = self.read()
            data.pop(key, None)
            data[key] = value
            if self.max_entries is not None:
                for old in list(data)[:-self.max_entries]:  # oldest first
                    del data[old]
            atomic_write_text(self.path, json.dumps(data, indent=self._indent, sort_keys=self._sort_keys) + "\n")


def file_stamp(st: os.stat_result) -> dict[str, int]:
    """What must stay equal for a file to count as unchanged since it was checked."""
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "ino": st.st_ino}


def crc32_file(path: str | os.PathLike[str], chunk: int = 1 << 22) -> int:
    """CRC-32 of a file's bytes (cheap integrity checks of index files)."""
    import zlib

    crc = 0
    with open(path, "rb") as f:
        while block := f.read(chunk):
            crc = zlib.crc32(block, crc)
    return crc


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
