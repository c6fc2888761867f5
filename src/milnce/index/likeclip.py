"""Query by any clip: a user's video (a span of it), or a still image as a frozen clip, embedded
with an index's window settings and combined into one query vector (``clip_query``), which the
index ranks as it ranks a text query (``Index.search_embeddings``: filters, negatives, pages).

How the windows become one vector: each window embedding is L2-normalised, the mean is taken and
normalised again, then scaled to the windows' mean norm (scores stay on the scale of the stored
windows' dot products). On the fixture of ``benchmarks/bench_like_file.py`` (the synthetic model,
24 held-out videos) it puts the source video's window first for 6 of 24 clips, as often as the best
single window (the medoid) and more often than the per-window maximum (5 of 24; that one is not
a single vector either); the numbers are in the docs' search page.

A still image (``.jpg``, ``.png``: PyAV reads it as a one-frame video) becomes one window of that
frame repeated (the embedding path pads a short video by repeating its last frame): S3D is a 3D
convolutional network, so it sees no motion in it, only appearance; on the same fixture it finds
its own video first for 3 of 24 frames against 6 of 24 for the moving clip: a moving clip is the
better query.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import MissingFileError, UsageError
from ..printable import show_path
from ..protocols import VideoEncoder
from ..video import encode_video_file
from ..windows import WindowSettings

__all__ = ["ClipQuery", "LikeFileError", "STILL_EXTENSIONS", "clip_query", "combine_windows", "is_still"]

STILL_EXTENSIONS = (".jpg", ".jpeg", ".png")


class LikeFileError(UsageError):
    """A clip that cannot be a query: no frames in the span asked for, a bad span."""


@dataclass(frozen=True)
class ClipQuery:
    """A clip's query vector and what it was made of."""

    vector: np.ndarray  # (D,) float32
    windows: int  # windows combined
    start: float  # seconds: the first window's start
    end: float  # seconds: the last window's end
    still: bool  # a still image (one frozen window)


def is_still(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names a still image (by its extension)."""
    return os.path.splitext(os.fspath(path))[1].lower() in STILL_EXTENSIONS


def combine_windows(emb: np.ndarray) -> np.ndarray:
    """One query vector from a clip's window embeddings (N x D): the mean of the L2-normalised
    windows, normalised, times the windows' mean norm. ``LikeFileError`` for no (or no finite,
    non-zero) window."""
    e = np.asarray(emb, dtype=np.float64)
    if e.ndim != 2 or len(e) == 0:
        raise LikeFileError("the clip has no windows to combine")
    norms = np.linalg.norm(e, axis=1)
    ok = np.isfinite(norms) & (norms > 0)
    if not ok.any():
        raise LikeFileError("the clip's window embeddings are all zero or not finite")
    unit = e[ok] / norms[ok, None]
    mean = unit.mean(axis=0)
    length = float(np.linalg.norm(mean))
    if not length > 0:
        raise LikeFileError("the clip's windows cancel out (their mean embedding is zero)")
    return (mean / length * float(norms[ok].mean())).astype(np.float32)


def clip_query(model: VideoEncoder, settings: WindowSettings | Mapping[str, Any], path: str | os.PathLike[str],
               start: float | None = None, end: float | None = None, *, name: str | None = None) -> ClipQuery:
    """The query vector of ``path`` (a video, or a still image as a frozen clip) between ``start``
    and ``end`` seconds (default: all of it), embedded with ``settings`` (an index's window
    settings: ``Index.settings``). ``name``: how the file is named in messages (default the path).
    ``MissingFileError`` when there is no such file; ``LikeFileError`` for a bad span or no frames
    in it; ``milnce.video.decode.VideoError`` for an unreadable file."""
    p = os.fspath(path)
    shown = show_path(name if name is not None else p)
    if not os.path.isfile(p):
        raise MissingFileError(f"no such clip file: {shown}")
    for what, t in (("start", start), ("end", end)):
        if t is not None and not (math.isfinite(t) and t >= 0):
            raise LikeFileError(f"{shown}: the {what} must be a finite number of seconds >= 0, got {t!r}")
    if start is not None and end is not None and not end > start:
        raise LikeFileError(f"{shown}: the end ({end:g} s) must be after the start ({start:g} s)")
    w = settings if isinstance(settings, WindowSettings) else WindowSettings.from_dict(dict(settings))
    still = is_still(p)
    if still:  # one frame: no span to take
        start = end = None
    ve = encode_video_file(model, p, fps=w.fps, num_frames=w.num_frames, size=w.size, stride=w.stride, crop=w.crop,
                           start=start, end=end)
    if len(ve) == 0:
        span = "" if start is None and end is None else f" between {start or 0:g} s and {'the end' if end is None else f'{end:g} s'}"
        raise LikeFileError(f"{shown}: no frames{span}")
    vec = combine_windows(np.asarray(ve.embeddings))
    return ClipQuery(vector=vec, windows=len(ve), start=float(ve.starts[0]), end=float(ve.ends[-1]), still=still)
