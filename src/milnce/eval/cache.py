"""Per-video embedding cache: a rerun, or another metric over the same clips, decodes nothing.

One ``.npz`` per (video file, its size and modification time, protocol settings, the clips
asked of it, weights fingerprint). Entries hold the window starts, the window embeddings
(``n x 512``) and ``mixed_5c`` features (``n x 1024``) and the video's duration. Written
atomically (temporary file in the same folder, fsync, rename); read without unpickling.
A damaged entry (truncated, not an ``.npz``, object arrays, wrong shapes, non-finite numbers) is
recomputed (and rewritten), with a log line; an entry that cannot be written (read-only or full
disk) is skipped with one warning: the cache only saves time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_file

__all__ = ["EmbeddingCache", "default_cache_dir", "as_cache"]

log = logging.getLogger("milnce.eval")

_VERSION = 1


def default_cache_dir() -> Path:
    """``$MILNCE_HOME/eval-cache`` (default ``~/.cache/milnce/eval-cache``)."""
    from ..download import cache_dir

    return Path(cache_dir()) / "eval-cache"


class EmbeddingCache:
    """Window embeddings of one video under one protocol, keyed by what determines them."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.hits = 0
        self.misses = 0
        self.damaged = 0
        self._write_failed = False

    @staticmethod
    def key(path: str | os.PathLike[str], settings: dict[str, Any], clips: list[tuple[float | None, float | None]],
            weights_id: str) -> str:
        """Hex digest naming the entry; changes when the file, settings, clips or weights change."""
        p = Path(path).resolve()
        st = p.stat()
        blob = json.dumps({
            "v": _VERSION, "path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "settings": settings, "clips": [[a, b] for a, b in clips], "weights": weights_id,
        }, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def _file(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.npz"

    def get(self, key: str) -> dict[str, np.ndarray] | None:
        """The entry ``key`` (``starts``, ``video_embedding``, ``mixed_5c``, ``duration``), or None
        when there is none or it is damaged (then logged, and recomputed by the caller)."""
        f = self._file(key)
        if not f.is_file():
            self.misses += 1
            return None
        try:
            with np.load(f, allow_pickle=False) as z:
                out = {k: z[k] for k in z.files}
            why = _entry_problem(out)
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zipfile.LargeZipFile) as exc:
            why = " ".join((str(exc) or type(exc).__name__).split())  # truncated, garbage, pickled objects
        if why is not None:
            log.warning("eval cache: %s is damaged (%s); recomputing it", f, why)
            self.misses += 1
            self.damaged += 1
            return None
        self.hits += 1
        return out

    def put(self, key: str, arrays: dict[str, np.ndarray]) -> None:
        """Store an entry atomically; a damaged one (``_entry_problem``) is not stored, and a
        write that fails (read-only or full disk) is logged once and skipped."""
        if _entry_problem(arrays) is not None:
            return
        f = self._file(key)
        try:
            f.parent.mkdir(parents=True, exist_ok=True)
            with atomic_file(f) as fh:
                np.savez(fh, **arrays)  # type: ignore[arg-type]
        except OSError as exc:  # OutputError included
            if not self._write_failed:
                log.warning("eval cache: cannot write into %s (%s); going on without caching",
                            self.folder, exc.strerror or exc)
            self._write_failed = True


def _entry_problem(entry: dict[str, np.ndarray]) -> str | None:
    """None if ``entry`` is a usable cache entry, else why not: every member present and numeric,
    ``n`` finite starts, ``n x D`` finite embeddings, ``n x F`` finite features, one duration."""
    missing = [k for k in ("starts", "video_embedding", "mixed_5c", "duration") if k not in entry]
    if missing:
        return f"missing {', '.join(missing)}"
    for k in ("starts", "video_embedding", "mixed_5c", "duration"):
        if not isinstance(entry[k], np.ndarray) or entry[k].dtype.kind not in "fiu":
            return f"{k} is not a numeric array"
    starts, emb, feats = entry["starts"], entry["video_embedding"], entry["mixed_5c"]
    n = len(starts) if starts.ndim == 1 else -1
    if n < 0 or emb.ndim != 2 or feats.ndim != 2 or len(emb) != n or len(feats) != n or entry["duration"].size != 1:
        return (f"shapes do not agree (starts {starts.shape}, video_embedding {emb.shape}, mixed_5c {feats.shape}, "
                f"duration {entry['duration'].shape})")
    for k in ("starts", "video_embedding", "mixed_5c"):
        if not np.isfinite(entry[k]).all():
            return f"{k} holds NaN or infinite numbers"
    return None


def as_cache(cache: EmbeddingCache | str | os.PathLike[str] | bool | None) -> EmbeddingCache | None:
    """An evaluation's ``cache=`` argument as a cache: True = the default folder, False/None = none,
    a path = a cache there."""
    if cache is True:
        return EmbeddingCache(default_cache_dir())
    if cache is False or cache is None:
        return None
    return cache if isinstance(cache, EmbeddingCache) else EmbeddingCache(cache)

