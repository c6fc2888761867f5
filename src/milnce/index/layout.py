"""The on-disk layout of an index folder (file names, format version) and the path helpers."""

from __future__ import annotations

import os
import time

FORMAT_VERSION = 1
DB_NAME = "index.sqlite"
LOCK_NAME = ".lock"
ERROR_LOG = "errors.log"
DIM = 512
KINDS = ("vectors", "times", "codes", "aux")  # the append-only store files of a generation
EXT = {"vectors": "f32", "times": "f64", "codes": "i8", "aux": "f32"}
PREFIXES = ("vectors-", "times-", "codes-", "aux-", "ann-")
SCAN_BLOCK = 1 << 16  # rows per block of an exact scan


def now() -> float:
    return time.time()


def expand_path(path: str | os.PathLike[str]) -> str:
    """A path a user typed, with a leading ``~`` expanded (as a shell would in ``milnce index
    ~/videos``; ``$VARS`` are left alone: file names may contain ``$``)."""
    return os.path.expanduser(os.fspath(path))


def user_path(path: str | os.PathLike[str]) -> str:
    """Absolute path of a path a user typed (``~`` expanded)."""
    return os.path.abspath(expand_path(path))


def norm_path(path: str | os.PathLike[str]) -> str:
    """Absolute path (no expansion: for paths found on disk or stored in the index)."""
    return os.path.abspath(os.fspath(path))
