"""Reading clips: sliding windows over a video (``read_clips``), one evaluation clip over a
time range (``read_clip``), and batching clips into model input (``clips_to_tensor``).

Timing, padding and geometry are described in ``milnce.video.decode``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch

from ..errors import UsageError
from .decode import (
    DEFAULT,
    Clip,
    ClipReader,
    Converter,
    Sampler,
    Video,
    VideoError,
    check_common,
    check_path,
    check_times,
    pad_frames,
    stack_frames,
)

__all__ = ["read_clips", "read_clip", "clips_to_tensor"]


def read_clips(path: str | os.PathLike[str], fps: float = DEFAULT.fps, num_frames: int = DEFAULT.num_frames,
               size: int = DEFAULT.size, stride: int = DEFAULT.stride, start: float | None = None, end: float | None = None, crop: str = "center",
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
              fps: float = DEFAULT.fps, num_frames: int = DEFAULT.num_frames, size: int = DEFAULT.size, crop: str = "center", pad: str = "repeat",
              *, threads: int = 0) -> Clip:
    """One clip for ``[start, end]`` as ``num_windows`` windows spread over it (evaluation protocol).

    Window ``w`` starts at ``linspace(start, max(start, end - num_frames / fps), num_windows)[w]``
    and samples ``num_frames`` frames at ``fps`` from there (frames past the end of the video are
    padded as in ``read_clips``). Returns ``Clip(start, end, frames)`` with ``frames`` uint8
    ``num_windows x 3 x num_frames x size x size``; embed with ``model.encode_video(clip.frames)``
    and average the window embeddings.
    """
    p = check_path(path)
    check_common(fps, num_frames, size, 1, crop, pad)
    if int(num_windows) < 1:
        raise UsageError(f"num_windows must be >= 1, got {num_windows!r}")
    if start is None or end is None:
        raise VideoError(f"{p}: read_clip needs both start and end (seconds)")
    s, e = check_times(p, start, end)
    if math.isinf(e):
        raise VideoError(f"{p}: end must be finite")
    T = int(num_frames)
    starts = np.linspace(s, max(s, e - T / fps), int(num_windows))
    reader = WindowsAt(p, [float(st) for st in starts], fps, T, size, crop, pad, threads=threads)
    windows: dict[int, torch.Tensor] = {w: frames for w, _n, frames in reader}
    return Clip(s, e, torch.stack([windows[w] for w in range(len(starts))]))


class WindowsAt:
    """One window of ``num_frames`` samples at ``fps`` from each of ``starts`` (seconds), all in
    one decoding pass over the video (windows may overlap, repeat or run past the end).

    Iterating yields ``(w, n, frames)``: window ``w`` (its index in ``starts``) as soon as it is
    complete, ``n`` its real (not padded) samples, ``frames`` uint8 ``3 x T x S x S``; windows that
    run past the end of the video come last, padded with ``pad`` (a window with no real frame
    repeats the last frame, or is black with ``pad="zeros"``). ``duration`` (seconds, or None) is
    known after iterating. Raises ``VideoError`` for unreadable input or when even the first
    start is past the end. ``read_clip`` and the extraction pipeline read through this class.
    """

    def __init__(self, path: str, starts: list[float], fps: float, num_frames: int, size: int, crop: str,
                 pad: str, *, threads: int = 0, warn: Callable[[str], None] | None = None) -> None:
        self.path = check_path(path)
        if not starts:
            raise VideoError(f"{self.path}: no window start times given")
        for st in starts:
            if not math.isfinite(st) or st < 0:
                raise VideoError(f"{self.path}: window start times must be finite seconds >= 0, got {st!r}")
        self.starts, self.fps, self.num_frames = starts, float(fps), int(num_frames)
        self.size, self.crop, self.pad, self.threads, self.warn = size, crop, pad, threads, warn
        self.duration: float | None = None

    def __iter__(self) -> Iterator[tuple[int, int, torch.Tensor]]:
        p, starts, T, fps = self.path, self.starts, self.num_frames, self.fps
        first = min(starts)
        video = Video(p, threads=self.threads, warn=self.warn)
        try:
            if video.header_duration is not None and first >= video.header_duration + 1.0:
                raise VideoError(f"{p}: start ({first:g} s) is past the end of the video ({video.header_duration:.3f} s)")
            sampler = Sampler(video, Converter(self.size, self.crop))
            # every sample time of every window, in time order
            tagged = sorted((st + i / fps, w, i) for w, st in enumerate(starts) for i in range(T))
            got: dict[int, list[np.ndarray]] = {}
            emitted: set[int] = set()
            times = iter([(t, True) for t, _, _ in tagged])
            try:
                for (_, w, i), arr in zip(tagged, sampler.run(times, seek=first if first > 0 else None)):
                    assert arr is not None  # every requested time gets a frame
                    got.setdefault(w, []).append(arr)
                    if i == T - 1:  # window w is complete
                        emitted.add(w)
                        yield w, T, stack_frames(pad_frames(got.pop(w), T, self.pad))
            finally:
                self.duration = sampler.video_end if sampler.video_end is not None else video.header_duration
            if sampler.last_array is None:
                if video.last_time is None:
                    raise VideoError(f"{p}: no decodable video frames (zero-length video?)")
                end = sampler.video_end or video.last_time
                raise VideoError(f"{p}: start ({first:g} s) is past the end of the video ({end:.3f} s)")
            for w in range(len(starts)):  # windows that run past the end of the video: padded
                if w not in emitted:
                    real = got.pop(w, [])
                    n = len(real)
                    yield w, n, stack_frames(pad_frames(real or [sampler.last_array * (self.pad != "zeros")], T, self.pad))
        finally:
            video.close()


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
