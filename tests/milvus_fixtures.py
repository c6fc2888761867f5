"""Shared by the Milvus backend tests: the skip when Milvus Lite cannot run here, and synthetic
videos (``add_videos`` items) small enough for a Lite file."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest


def require_milvus_lite() -> None:
    """Skip the calling module, with the reason, where pymilvus or Milvus Lite cannot be imported."""
    pytest.importorskip("pymilvus", reason="the milvus extra (pymilvus) is not installed")
    pytest.importorskip("milvus_lite", reason="Milvus Lite (milvus-lite) cannot be imported on this platform")


def synthetic_videos(n: int, seed: int = 0, dim: int = 512) -> list[tuple[str, Any, int, float, str]]:
    """``add_videos`` items: clustered windows (so moments merge neighbours), 1 to 7 windows each,
    in three folders, two extensions, spread mtimes and durations."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((12, dim)).astype(np.float32)
    items = []
    for i in range(n):
        w = int(rng.integers(1, 8))
        base = centres[rng.integers(0, 12)]
        emb = (base[None] + 0.7 * rng.standard_normal((w, dim))).astype(np.float32)
        starts = np.arange(w) * 1.6
        folder = ("kitchen", "garden", "garage")[i % 3]
        items.append((f"/collection/{folder}/v{i:03d}.{'mp4' if i % 2 else 'mkv'}",
                      SimpleNamespace(embeddings=emb, starts=starts, ends=starts + 3.2, duration=float(w * 1.6 + 1.6)),
                      1000 + i, 1.7e9 + 3600.0 * i, f"hash{i}"))
    return items
