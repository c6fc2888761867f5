"""Windows of one video job, as the decoding workers produce them.

Two kinds of job: sliding windows over ``[start, end]`` (``milnce.video.ClipReader``, exactly
``read_clips``), or one window per explicit start time (the evaluation protocol:
``milnce.video.clips.WindowsAt``, the reader behind ``read_clip``, one decoding pass however
many windows a video has).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch

from ..errors import UsageError
from ..video.clips import WindowsAt
from ..video.decode import ClipReader
from ..windows import WindowSettings

__all__ = ["JobDecoder"]


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
        if self.settings.decoder == "ffmpeg":  # the frame source: ffmpeg-exact (recipes, evaluation)
            return self._ffmpeg()
        if self.starts is None:
            return self._sliding()
        return self._explicit()

    def _ffmpeg(self) -> Iterator[tuple[int, float, float, torch.Tensor]]:
        """``milnce.video.ffmpeg_exact``: consecutive chunks of the whole video (crop center, the
        feature extractors; ``start``/``end`` are not supported) or one window per explicit
        start (crop square, the evaluation loaders); padding is always black frames."""
        from ..video.ffmpeg_exact import ffmpeg_chunks, ffmpeg_window

        s = self.settings
        if self.start is not None or self.end is not None:
            raise UsageError("the ffmpeg-exact decoder takes whole videos (no start/end)")
        if s.crop != ("center" if self.starts is None else "square"):
            raise UsageError("the ffmpeg-exact decoder cuts chunks with crop center and windows at explicit "
                             f"starts with crop square, got crop {s.crop!r}")
        if self.starts is None:
            end = 0.0
            for c in ffmpeg_chunks(self.path, s.fps, s.size, s.num_frames, threads=self.threads, warn=self.warn):
                end = c.end
                yield c.index, c.start, c.end, torch.from_numpy(c.frames).permute(3, 0, 1, 2)
            self.duration = end
            return
        for w, st in enumerate(self.starts):
            frames, n = ffmpeg_window(self.path, st, s.num_frames, s.fps, s.size, threads=self.threads, warn=self.warn)
            # no frame at all (a start past the end): black frames, as the reference loader's zeros
            yield w, st, round(st + n / s.fps, 9), torch.from_numpy(frames).permute(3, 0, 1, 2)

    def _sliding(self) -> Iterator[tuple[int, float, float, torch.Tensor]]:
        s = self.settings
        reader = ClipReader(self.path, s.fps, s.num_frames, s.size, s.stride, self.start, self.end,
                            s.crop, self.pad, threads=self.threads, warn=self.warn)
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
