"""What the embedding path is asked to do for one video (``VideoJob``): below the pipeline, its
scheduler and its decoders, which all read it."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

__all__ = ["VideoJob"]


@dataclass(frozen=True)
class VideoJob:
    """One video to embed.

    ``starts``: explicit window start times in seconds (one window per start: the evaluation
    protocol); otherwise sliding windows over ``[start, end]`` (default: the whole video) every
    ``settings.stride`` frames. ``key``: the caller's id, returned in the result."""

    path: str
    key: Hashable = None
    starts: Sequence[float] | None = None
    start: float | None = None
    end: float | None = None
