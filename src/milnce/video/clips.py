"""Reading clips: sliding windows over a video (``read_clips``), one evaluation clip over a
time range (``read_clip``), and batching clips into model input (``clips_to_tensor``).

Timing, padding and geometry are described in ``milnce.video.decode``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator

import numpy as np
import torch

from ..errors import UsageError
from .decode import (
    _DEFAULT,
    Clip,
    ClipReader,
    VideoError,
    _check_common,
    _check_path,
    _check_times,
    _Converter,
    _pad,
    _Sampler,
    _stack,
    _Video,
)

__all__ = ["read_clips", "read_clip", "clips_to_tensor"]


def read_clips(path: str | os.PathLike[str], fps: float = _DEFAULT.fps, num_frames: int = _DEFAULT.num_frames,
               size: int = _DEFAULT.size, stride: int = _DEFAULT.stride, start: float | None = None, end: float | None = None, crop: str = "center",
               pad: str = "repeat", *, threads: int = 0) -> Iterator[Clip]:
    """Sliding windows over a video (or ``[start, end]`` seconds) in one decoding pass.

    Yields ``Clip(start, end, frames)`` with ``frames`` uint8 RGB ``3 x num_frames x size x size``.
    Window ``k`` samples the times ``t0 + (k * stride + i) / fps`` (``i < num_frames``,
    ``t0 = start or 0``), each taking the frame displayed at that time (the last frame whose
    timestamp is ``<= t``). The last window, if partial, is padded (``pad="repeat"`` repeats the
    last frame, ``"loop"`` cycles the window's frames); a video shorter than one window yields one
    padded clip. ``crop``: ``"center"`` (short side to ``size``, centre crop), ``"square"``
    (reference evaluation: centre square crop then resize) or ``"resize"`` (full frame).
    ``threads``: decoder threads (0 = automatic). Memory stays bounded: only the frames of the
    current window are kept. Raises ``VideoError`` (a ``ValueError``) for unreadable input; warns
    (``RuntimeWarning``) with the time of the break for corrupt or truncated files.
    """
    return iter(ClipReader(path, fps, num_frames, size, stride, start, end, crop, pad, threads=threads))


def read_clip(path: str | os.PathLike[str], start: float, end: float, num_windows: int = 4,
              fps: float = _DEFAULT.fps, num_frames: int = _DEFAULT.num_frames, size: int = _DEFAULT.size, crop: str = "center", pad: str = "repeat",
              *, threads: int = 0) -> Clip:
    """One clip for ``[start, end]`` as ``num_windows`` windows spread over it (evaluation protocol).

    Window ``w`` starts at ``linspace(start, max(start, end - num_frames / fps), num_windows)[w]``
    and samples ``num_frames`` frames at ``fps`` from there (frames past the end of the video are
    padded as in ``read_clips``). Returns ``Clip(start, end, frames)`` with ``frames`` uint8
    ``num_windows x 3 x num_frames x size x size``; embed with ``model.encode_video(clip.frames)``
    and average the window embeddings.
    """
    p = _check_path(path)
    _check_common(fps, num_frames, size, 1, crop, pad)
    if int(num_windows) < 1:
        raise UsageError(f"num_windows must be >= 1, got {num_windows!r}")
    if start is None or end is None:
        raise VideoError(f"{p}: read_clip needs both start and end (seconds)")
    s, e = _check_times(p, start, end)
    if math.isinf(e):
        raise VideoError(f"{p}: end must be finite")
    T = int(num_frames)
    starts = np.linspace(s, max(s, e - T / fps), int(num_windows))
    tagged = sorted((float(st) + i / fps, w, i) for w, st in enumerate(starts) for i in range(T))
    video = _Video(p, threads=threads)
    if video.header_duration is not None and s >= video.header_duration + 1.0:
        video.close()
        raise VideoError(f"{p}: start ({s:g} s) is past the end of the video ({video.header_duration:.3f} s)")
    sampler = _Sampler(video, _Converter(size, crop))
    got: list[list[np.ndarray]] = [[] for _ in range(int(num_windows))]
    try:
        times = iter([(t, True) for t, _, _ in tagged])
        for (_, w, _i), arr in zip(tagged, sampler.run(times, seek=s if s > 0 else None)):
            assert arr is not None
            got[w].append(arr)
    finally:
        video.close()
    if sampler.last_array is None:
        if video.last_time is None:
            raise VideoError(f"{p}: no decodable video frames")
        raise VideoError(f"{p}: start ({s:g} s) is past the end of the video ({sampler.video_end or video.last_time:.3f} s)")
    windows = [_stack(_pad(real if real else [sampler.last_array * (pad != "zeros")], T, pad)) for real in got]
    return Clip(s, e, torch.stack(windows))


def clips_to_tensor(clips: Clip | torch.Tensor | Iterable[Clip | torch.Tensor]) -> torch.Tensor:
    """Clips (or uint8 ``3 x T x H x W`` tensors) -> float ``B x 3 x T x H x W`` in [0, 1].

    A ``Clip`` from ``read_clip`` (``W x 3 x T x H x W`` frames) contributes its ``W`` windows."""
    if isinstance(clips, (Clip, torch.Tensor)):
        clips = [clips]
    parts = []
    for c in clips:
        x = c.frames if isinstance(c, Clip) else c
        if not isinstance(x, torch.Tensor):
            x = torch.as_tensor(np.asarray(x))
        if x.ndim == 4:
            x = x[None]
        if x.ndim != 5 or x.shape[1] != 3:
            raise UsageError(f"expected clip frames 3 x T x H x W, got shape {tuple(x.shape)}")
        parts.append(x)
    if not parts:
        raise UsageError("no clips to batch")
    shapes = {tuple(p.shape[1:]) for p in parts}
    if len(shapes) > 1:
        raise UsageError(f"clips of different shapes cannot be batched: {sorted(shapes)}")
    out = torch.cat(parts) if len(parts) > 1 else parts[0]
    if out.dtype == torch.uint8:
        return out.float().div_(255.0)
    return out.float()
