"""Per-video embedding cache: a rerun, or another metric over the same clips, decodes nothing.

One ``.npz`` per (video file, its size and modification time, protocol settings, the clips
asked of it, weights fingerprint). Entries hold the window starts, the window embeddings
(``n x 512``) and ``mixed_5c`` features (``n x 1024``) and the video's duration. Written
atomically (temporary file in the same folder, fsync, rename); read without unpickling.
A damaged entry is ignored (and rewritten).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_file

__all__ = ["EmbeddingCache", "default_cache_dir"]

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
        f = self._file(key)
        if not f.is_file():
            self.misses += 1
            return None
        try:
            with np.load(f, allow_pickle=False) as z:
                out = {k: z[k] for k in z.files}
            if not {"starts", "video_embedding", "mixed_5c", "duration"} <= out.keys():
                raise ValueError("incomplete entry")
        except (OSError, ValueError, EOFError):
            self.misses += 1
            return None
        self.hits += 1
        return out

    def put(self, key: str, arrays: dict[str, np.ndarray]) -> None:
        f = self._file(key)
        f.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(f) as fh:
            np.savez(fh, **arrays)  # type: ignore[arg-type]
