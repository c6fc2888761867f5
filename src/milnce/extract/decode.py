"""Windows of one video job, as the decoding workers produce them.

Two kinds of job: sliding windows over ``[start, end]`` (``milnce.video``'s clip reader, exactly
``read_clips``), or one window per explicit start time (the evaluation protocol: exactly the
windows ``read_clip`` builds, decoded in one pass however many windows a video has).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from .. import video as _video
from ..windows import WindowSettings

__all__ = ["JobDecoder", "clip_reader_class"]


def clip_reader_class() -> Any:
    """The reader class behind ``read_clips`` (public ``ClipReader`` once the layout lands)."""
    return getattr(_video, "ClipReader", None) or _video._ClipReader


def _internal(name: str) -> Any:
    obj = getattr(_video, name, None)
    if obj is None:  # the video package may keep its internals in a submodule
        import importlib
        import pkgutil

        for mod in pkgutil.iter_modules(getattr(_video, "__path__", [])):
            sub = importlib.import_module(f"{_video.__name__}.{mod.name}")
            obj = getattr(sub, name, None)
            if obj is not None:
                break
    if obj is None:  # pragma: no cover - layout drift
        raise ImportError(f"milnce.video has no {name}")
    return obj


class JobDecoder:
    """Iterates ``(k, start, end, frames)`` for a job: window ``k`` (its rank in the job's window
    order; windows may come out of order for explicit starts), ``frames`` uint8 ``3 x T x S x S``.

    ``duration`` (seconds, or None) is known after iterating. Raises ``VideoError`` for
    unreadable input; ``warn`` receives messages about corrupt or truncated data.
    """

    def __init__(self, path: str, settings: WindowSettings, pad: str, *, starts: Sequence[float] | None = None,
                 start: float | None = None, end: float | None = None, threads: int = 1,
                 warn: Callable[[str], None] | None = None) -> None:
        self.path = path
        self.settings = settings
        self.pad = pad
        self.starts = None if starts is None else [float(s) for s in starts]
        self.start, self.end = start, end
        self.threads = int(threads)
        self.warn = warn
        self.duration: float | None = None

    def __iter__(self) -> Iterator[tuple[int, float, float, torch.Tensor]]:
        if self.starts is None:
            return self._sliding()
        return self._explicit()

    def _sliding(self) -> Iterator[tuple[int, float, float, torch.Tensor]]:
        s = self.settings
        reader = clip_reader_class()(self.path, s.fps, s.num_frames, s.size, s.stride, self.start, self.end,
                                     s.crop, self.pad, threads=self.threads, warn=self.warn)
        try:
            for k, clip in enumerate(reader):
                yield k, clip.start, clip.end, clip.frames
        finally:
            self.duration = reader.duration

    def _explicit(self) -> Iterator[tuple[int, float, float, torch.Tensor]]:
        s = self.settings
        path = _internal("_check_path")(self.path)
        starts = self.starts or []
        if not starts:
            raise _video.VideoError(f"{path}: no window start times given")
        for st in starts:
            if not math.isfinite(st) or st < 0:
                raise _video.VideoError(f"{path}: window start times must be finite seconds >= 0, got {st!r}")
        T, fps = s.num_frames, s.fps
        # every sample time of every window, in time order (windows may overlap or repeat)
        tagged = sorted((st + i / fps, w, i) for w, st in enumerate(starts) for i in range(T))
        kwargs: dict[str, Any] = {"threads": self.threads}
        if self.warn is not None:
            kwargs["warn"] = self.warn
        video = _internal("_Video")(path, **kwargs)
        sampler = _internal("_Sampler")(video, _internal("_Converter")(s.size, s.crop))
        pad_frames = _internal("_pad")
        got: dict[int, list[np.ndarray]] = {}
        emitted: set[int] = set()
        first = min(starts)
        try:
            times = iter([(t, True) for t, _, _ in tagged])
            for (_, w, i), arr in zip(tagged, sampler.run(times, seek=first if first > 0 else None)):
                got.setdefault(w, []).append(arr)
                if i == T - 1:  # window w is complete
                    yield w, starts[w], round(starts[w] + T / fps, 9), _to_tensor(got.pop(w), T, self.pad, pad_frames)
                    emitted.add(w)
            if sampler.last_array is None:
                if video.last_time is None:
                    raise _video.VideoError(f"{path}: no decodable video frames (zero-length video?)")
                end = sampler.video_end or video.last_time
                raise _video.VideoError(f"{path}: every window start is past the end of the video ({end:.3f} s)")
            # windows that run past the end of the video: padded
            for w, st in enumerate(starts):
                if w in emitted:
                    continue
                real = got.pop(w, [])
                n = len(real)
                if not real:
                    real = [sampler.last_array * (self.pad != "zeros")]
                yield w, st, round(st + n / fps, 9), _to_tensor(real, T, self.pad, pad_frames)
        finally:
            video.close()
            self.duration = sampler.video_end if sampler.video_end is not None else video.header_duration


def _to_tensor(frames: list[np.ndarray], T: int, pad: str, pad_frames: Callable[..., list[np.ndarray]]) -> torch.Tensor:
    return torch.from_numpy(np.stack(pad_frames(frames, T, pad), axis=1))
