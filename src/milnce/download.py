"""Downloads into the cache (placeholder until the download module lands)."""
from __future__ import annotations
import os
from pathlib import Path


def cache_dir() -> Path:
    return Path(os.environ.get("MILNCE_HOME") or Path.home() / ".cache" / "milnce")


def ensure_weights(info, progress: bool = True):  # type: ignore[no-untyped-def]
    raise NotImplementedError
