"""Window sources: what turns one decoding task into windows of frames (the pipeline's decoder hook).

A *window source factory* is a picklable callable (a module-level function or class) that the
pipeline calls in a decoding worker, once per task::

    factory(task: DecodeTask, settings: WindowSettings, pad: str, threads: int,
            warn: Callable[[str], None]) -> WindowSource

The returned ``WindowSource`` iterates ``(k, start, end, frames)``: window ``k`` (its rank in
the task's window order; windows may come out of order for explicit starts), ``start``/``end``
in seconds (``end`` stops at the last real frame of a padded window), ``frames`` uint8 either
``3 x T x S x S`` (channels first, as the model takes them) or ``T x S x S x 3`` (channels last,
as FFmpeg writes raw RGB; the worker transposes it), ``T = settings.num_frames`` and
``S = settings.size``. After iterating, ``duration`` is the video's duration in seconds (or
None). It raises ``VideoError`` (or any exception: the video fails, the run goes on) for
unreadable input and passes messages about corrupt or truncated data to ``warn``.

``default_source`` is PyAV decoding (``ClipReader`` for sliding windows, ``WindowsAt`` for
explicit start times); ``ffmpeg_source`` is ``milnce.video.ffmpeg_exact`` (the ``ffmpeg``
command line's frames: the feature recipes and the evaluation protocol). ``source_for(settings)``
is the one place that picks between them, from ``settings.decoder``; ``run_jobs`` calls it when
no ``source=`` is given. Another decoder plugs in with ``run_jobs(..., source=my_factory)``
without touching the scheduler. A factory whose windows depend on the whole stream, so that it
cannot honour a split (``task.part``), says so with ``splittable = False`` (an attribute of the
factory): ``run_jobs`` then keeps every video whole (as ``min_part_s=float("inf")``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from ..errors import UsageError
from ..windows import WindowSettings
from .clips import WindowsAt
from .decode import ClipReader

__all__ = ["DecodeTask", "WindowSource", "WindowSourceFactory", "JobDecoder", "default_source", "FfmpegWindows",
           "ffmpeg_source", "source_for", "splittable"]


@dataclass(frozen=True)
class DecodeTask:
    """One decoding task: a video (or a part of one). ``starts``: explicit window start times
    (one window each); otherwise sliding windows over ``[start, end]`` (None: the whole video).
    ``part``: ``(first window, number of windows or None for the rest)`` of a split video."""

    jid: int
    path: str
    starts: tuple[float, ...] | None = None
    start: float | None = None
    end: float | None = None
    part: tuple[int, int | None] | None = None


class WindowSource(Protocol):
    """The windows of one task: iterate ``(k, start, end, frames)``; ``duration`` after iterating."""

    duration: float | None

    def __iter__(self) -> Iterator[tuple[int, float, float, torch.Tensor]]: ...


WindowSourceFactory = Callable[[DecodeTask, WindowSettings, str, int, Callable[[str], None]], WindowSource]


class JobDecoder:
    """PyAV windows of a task: sliding (``ClipReader``, exactly ``read_clips``) or at explicit
    starts (``WindowsAt``, the reader behind ``read_clip``: one pass however many windows)."""

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
        reader = ClipReader.from_settings(self.path, self.settings, self.pad, start=self.start, end=self.end,
                                          threads=self.threads, warn=self.warn)
        try:
            for k, clip in enumerate(reader):
                yield k, clip.start, clip.end, clip.frames
        finally:
            self.duration = reader.duration

    def _explicit(self) -> Iterator[tuple[int, float, float, torch.Tensor]]:
        s = self.settings
        reader = WindowsAt(self.path, self.starts or [], s.fps, s.num_frames, s.size, s.crop, self.pad,
                           threads=self.threads, warn=self.warn)
        try:
            for w, n, frames in reader:
                st = reader.starts[w]
                yield w, st, round(st + n / s.fps, 9), frames
        finally:
            self.duration = reader.duration


def default_source(task: DecodeTask, settings: WindowSettings, pad: str, threads: int,
                   warn: Callable[[str], None]) -> WindowSource:
    """The PyAV window source (``JobDecoder``)."""
    return JobDecoder(task.path, settings, pad, starts=task.starts, start=task.start, end=task.end,
                      threads=threads, warn=warn)


class FfmpegWindows:
    """ffmpeg-exact windows of a task (``milnce.video.ffmpeg_exact``): consecutive chunks of the
    whole video (crop ``center``: the feature extractors) or one window per explicit start (crop
    ``square``: the evaluation loaders). Padding is always black frames; frames come channels last."""

    def __init__(self, task: DecodeTask, settings: WindowSettings, threads: int = 1,
                 warn: Callable[[str], None] | None = None) -> None:
        if task.start is not None or task.end is not None or task.part is not None:
            raise UsageError("the ffmpeg-exact decoder takes whole videos (no start/end, never split)")
        want = "center" if task.starts is None else "square"
        if settings.crop != want:
            raise UsageError("the ffmpeg-exact decoder cuts chunks with crop center and windows at explicit "
                             f"starts with crop square, got crop {settings.crop!r}")
        self.task, self.settings, self.threads, self.warn = task, settings, int(threads), warn
        self.duration: float | None = None

    def __iter__(self) -> Iterator[tuple[int, float, float, torch.Tensor]]:
        from .ffmpeg_exact import ffmpeg_chunks, ffmpeg_window

        s, path = self.settings, self.task.path
        if self.task.starts is None:
            end = 0.0
            for c in ffmpeg_chunks(path, s.fps, s.size, s.num_frames, threads=self.threads, warn=self.warn):
                end = c.end
                yield c.index, c.start, c.end, torch.from_numpy(c.frames)
            self.duration = end
            return
        for w, st in enumerate(self.task.starts):
            frames, n = ffmpeg_window(path, st, s.num_frames, s.fps, s.size, threads=self.threads, warn=self.warn)
            # no frame at all (a start past the end): black frames, as the reference loader's zeros
            yield w, st, round(st + n / s.fps, 9), torch.from_numpy(frames)


def ffmpeg_source(task: DecodeTask, settings: WindowSettings, pad: str, threads: int,
                  warn: Callable[[str], None]) -> WindowSource:
    """The ffmpeg-exact window source (``FfmpegWindows``; ``pad`` is always black frames)."""
    return FfmpegWindows(task, settings, threads, warn)


ffmpeg_source.splittable = False  # type: ignore[attr-defined]  # frames depend on the whole stream


def source_for(settings: WindowSettings) -> WindowSourceFactory:
    """The window source of ``settings.decoder``: ``"pyav"`` -> ``default_source``,
    ``"ffmpeg"`` -> ``ffmpeg_source``."""
    return ffmpeg_source if settings.decoder == "ffmpeg" else default_source


def splittable(source: WindowSourceFactory) -> bool:
    """Whether ``source`` honours ``task.part`` (a factory says no with ``splittable = False``)."""
    return bool(getattr(source, "splittable", True))
