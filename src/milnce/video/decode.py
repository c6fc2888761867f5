"""Video input: any video file into model-ready clips, and whole-video encoding.

Decoding runs in-process with PyAV (FFmpeg's libraries): one decoding pass per video, frames
picked by presentation timestamp, resized and converted to RGB in C (libswscale) only when a
frame is actually used, and only the frames of the windows in flight are kept in memory.

Timing (all times are seconds on the video's own timeline, 0 = the start of its video stream):

* Sample times. ``read_clips`` samples the video at ``t_j = t0 + j / fps`` (``j = 0, 1, ...``)
  with ``t0 = start`` (default 0) for as long as ``t_j < stop``, where ``stop = min(end,
  video_end)`` and ``video_end`` is the presentation time of the last frame plus its duration.
  ``N`` is the number of such samples.
* Frame picked for a sample time ``t``: the frame being displayed at ``t``, i.e. the last frame
  whose presentation time is ``<= t`` (the first frame for a ``t`` before it). This is exact for
  variable-frame-rate video. (FFmpeg's ``fps`` filter instead rounds to the nearest output tick,
  i.e. picks the frame displayed at ``t + 0.5 / fps``.)
* Windows. Window ``k`` holds the samples ``k * stride + i`` for ``i < num_frames``:
  ``clip.start = t0 + k * stride / fps`` and ``clip.end = clip.start + n / fps`` where ``n`` is the
  number of real (not padded) samples in it (``num_frames`` for every full window). All full
  windows are produced; then, if samples at the end of the range are in no full window (or the
  range is shorter than one window), one more window at the next ``k`` holds them and is padded.
  So a video shorter than one clip gives exactly one padded clip, never zero clips.
* Padding (``pad=``): ``"repeat"`` (default) repeats the last real frame; ``"loop"`` cycles the
  window's real frames from its first one, like the TF-Hub demo loops a short video; ``"zeros"``
  pads with black frames (the reference evaluation code).

Geometry (``crop=``): ``"center"`` (default) resizes the short side to ``size`` (keeping the
aspect ratio) and centre-crops ``size x size``; ``"square"`` is the reference evaluation's
recipe (centre square crop of side ``min(w, h)``, then resize to ``size x size``, FFmpeg's
``crop`` and ``scale`` filters); ``"resize"`` squeezes the full frame to ``size x size``.
Resizing is bicubic. Rotation metadata (the display matrix of phone videos) is honoured in
multiples of 90 degrees; sample aspect ratio is ignored (as in the reference recipe).
"""


from __future__ import annotations

import gc
import math
import os
import time
import warnings
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import MilnceError, UsageError
from ..windows import CROPS, PADS, WindowSettings, check_pad

__all__ = [
    "VideoError",
    "VideoNotFoundError",
    "VideoIsADirectoryError",
    "Clip",
    "ClipReader",
    "CROPS",
    "PADS",
]

DEFAULT = WindowSettings()  # the published weights' conventions (milnce.windows)
_EPS = 1e-6  # seconds; a frame at t + _EPS still counts as displayed at t (float round-off)
_HUGE_PIXELS = 3840 * 2160 + 1  # above 4K, frame threads are capped to bound decoder memory
# Pixel formats scaled in their own format first, then converted to RGB at the small size
# (twice as fast as one combined swscale pass for 720p input).
_SCALE_FIRST = frozenset({"yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p", "gray"})


# A process forked after decoding (a DataLoader worker under the fork start method) inherits the
# parent's unreachable PyAV filter graphs (reference cycles, freed only by the garbage collector);
# collecting one in the child waits forever for the parent's filter threads, which the child does
# not have. So a forked child never collects what it inherited: its own garbage is collected as usual.
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=gc.freeze)


class VideoError(MilnceError, ValueError):
    """A video that cannot be read: not a video, corrupt, unsupported, or bad time arguments.

    The message names the file."""


def not_readable(path: str, exc: BaseException) -> VideoError:
    """The one error for a file FFmpeg cannot open as a video: ``PATH: not a readable video file
    (FFmpeg's reason)``, without the exception's class or errno (``milnce index``, ``extract`` and
    ``eval`` report the same line)."""
    return VideoError(f"{path}: not a readable video file ({_fferr(exc)})")


class VideoNotFoundError(VideoError, FileNotFoundError):
    """The video file does not exist."""


class VideoIsADirectoryError(VideoError, IsADirectoryError):
    """The path given as a video is a directory."""


@dataclass
class Clip:
    """One window of a video.

    ``frames``: uint8 RGB tensor ``3 x T x S x S`` (``read_clip`` returns ``W x 3 x T x S x S``);
    ``start``/``end``: seconds in the source video (``end`` stops at the last real frame's slot
    for a padded window)."""

    start: float
    end: float
    frames: torch.Tensor

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[-3])



# --------------------------------------------------------------------------------------------
# Opening and decoding


def check_path(path: str | os.PathLike[str]) -> str:
    """The video's path as ``str``, checked: a ``VideoError`` unless it is a non-empty, readable file."""
    p = os.fspath(path)
    if not isinstance(p, str):
        p = os.fsdecode(p)
    if not os.path.exists(p):
        raise VideoNotFoundError(f"{p}: no such video file")
    if os.path.isdir(p):
        raise VideoIsADirectoryError(f"{p}: is a directory, not a video file")
    try:
        size = os.path.getsize(p)
    except OSError as exc:
        raise VideoError(f"{p}: cannot read ({exc})") from exc
    if size == 0:
        raise VideoError(f"{p}: empty file (0 bytes), not a video")
    return p


def _fferr(exc: BaseException) -> str:
    msg = getattr(exc, "strerror", None) or str(exc)
    return str(msg).strip()


class Video:
    """An open video stream that yields ``(time, frame)`` in presentation order."""

    def __init__(self, path: str, threads: int = 0, warn: Callable[[str], None] | None = None) -> None:
        import av

        self.path = path
        self.threads = threads
        self._warn = warn or (lambda m: warnings.warn(m, RuntimeWarning, stacklevel=4))
        self.container: Any = None
        self.stream: Any
        self._open()
        s = self.stream
        self.tb = float(s.time_base) if s.time_base else 1e-6
        self.origin: float | None = float(s.start_time * s.time_base) if s.start_time is not None and s.time_base else None
        rate = s.average_rate or s.guessed_rate
        self.period: float | None = 1.0 / float(rate) if rate and float(rate) > 0 and float(rate) < 1000 else None
        dur = None
        if s.duration is not None and s.time_base and s.duration > 0:
            dur = float(s.duration * s.time_base)
        elif (container := self._container()).duration and container.duration > 0:
            dur = container.duration / av.time_base
        self.header_duration: float | None = dur
        self.width, self.height = s.codec_context.width, s.codec_context.height
        self.errors = 0
        self.first_error_time: float | None = None
        self.last_time: float | None = None  # last decoded frame time

    def _open(self) -> None:
        import av

        try:
            self.container = av.open(self.path, mode="r", metadata_errors="ignore")
        except av.error.FileNotFoundError as exc:  # pragma: no cover - raced with check_path
            raise VideoNotFoundError(f"{self.path}: no such video file") from exc
        except (av.error.FFmpegError, UnicodeDecodeError) as exc:
            raise not_readable(self.path, exc) from exc
        streams = [
            s for s in self.container.streams.video
            if not (int(s.disposition) & int(av.stream.Disposition.attached_pic))
        ]
        if not streams:
            kinds = sorted({s.type for s in self.container.streams})
            self.container.close()
            if not kinds:
                raise VideoError(f"{self.path}: the file holds no streams (empty or zero-length video)")
            raise VideoError(f"{self.path}: no video stream (only {', '.join(kinds)}); audio-only file?")
        s = streams[0]
        if s.codec_context is None:
            self.container.close()
            raise VideoError(f"{self.path}: unsupported video codec {s.codec.name if s.codec else '?'}")
        w, h = s.codec_context.width, s.codec_context.height
        s.thread_type = "AUTO"
        count = self.threads
        if w * h >= _HUGE_PIXELS:  # each frame thread holds a full-size frame
            count = min(count, 2) if count else 2
        s.thread_count = count
        self.stream = s

    def _container(self) -> Any:
        return self.container

    def reopen(self) -> None:
        self.close()
        self._open()

    def close(self) -> None:
        if self.container is not None:
            try:
                self.container.close()
            except Exception:  # pragma: no cover
                pass
            self.container = None

    def _note_error(self, exc: BaseException, t: float | None) -> None:
        self.errors += 1
        if self.errors == 1:
            self.first_error_time = t
            where = f"at {t:.3f} s" if t is not None else "at the start"
            self._warn(f"{self.path}: corrupt or truncated video data {where} ({_fferr(exc)}); "
                       "decoding what is readable")

    def _raw_frames(self) -> Iterator[Any]:
        import av

        demux = self.container.demux(self.stream)
        while True:
            try:
                packet = next(demux)
            except StopIteration:
                return
            except (av.error.FFmpegError, OSError, ValueError) as exc:
                self._note_error(exc, self.last_time)
                # flush what the decoder still holds, then stop
                try:
                    yield from self.stream.decode(None)
                except (av.error.FFmpegError, ValueError):
                    pass
                return
            try:
                frames = packet.decode()
            except (av.error.FFmpegError, ValueError) as exc:
                self._note_error(exc, self.last_time)
                continue
            yield from frames

    def frames(self, seek: float | None = None) -> Generator[tuple[float, Any], None, None]:
        """``(t, frame)`` with ``t`` in seconds from the stream start, strictly increasing.

        With ``seek``, starts at the keyframe at or before ``seek`` (falls back to decoding from
        the beginning if the container cannot seek there exactly)."""
        import av

        if seek is not None and seek > 0:
            if self.origin is None:  # no stream start time: the timeline starts at pts 0
                self.origin = 0.0
            origin = self.origin
            try:
                self.container.seek(int((seek + origin) / self.tb), stream=self.stream, backward=True, any_frame=False)
                seeked = True
            except (av.error.FFmpegError, OverflowError, ValueError):
                self.reopen()
                seeked = False
        else:
            seeked = False
        if seeked:
            first = True
            for t, frame in self._timed(self._raw_frames()):
                if first:
                    first = False
                    if t > (seek or 0.0) + _EPS:  # landed after the target: decode from the start instead
                        break
                yield t, frame
            else:
                if not first:
                    return
                # nothing decoded after seeking: the start may be past the end; check from the start
            self.reopen()
            self.errors, self.first_error_time, self.last_time = 0, None, None
        yield from self._timed(self._raw_frames())

    def _timed(self, raw: Iterable[Any]) -> Iterator[tuple[float, Any]]:
        last = None
        backwards = 0
        for frame in raw:
            pts = frame.pts
            if pts is None:
                t = (last + (self.period or 0.04)) if last is not None else 0.0
            else:
                if self.origin is None:
                    self.origin = pts * self.tb
                t = pts * self.tb - self.origin
            if last is not None and t <= last + _EPS * 0.01:
                backwards += 1
                if backwards == 1:
                    self._warn(f"{self.path}: frame timestamps go backwards at {t:.3f} s; dropping such frames")
                continue
            last = t
            self.last_time = t
            yield t, frame

    def frame_duration(self, frame: Any, prev_gap: float | None) -> float:
        d = frame.duration
        if d and d > 0:
            return float(d) * self.tb
        if self.period:
            return self.period
        if prev_gap:
            return prev_gap
        return 0.0


class Converter:
    """Decoded frame -> ``3 x S x S`` uint8 RGB, in C (libswscale / libavfilter)."""

    def __init__(self, size: int, crop: str) -> None:
        from av.video.reformatter import VideoReformatter

        if crop not in CROPS:
            raise UsageError(f"crop must be one of {CROPS}, got {crop!r}")
        if int(size) < 1:
            raise UsageError(f"size must be a positive number of pixels, got {size!r}")
        self.size = int(size)
        self.crop = crop
        self._scale = VideoReformatter()
        self._rgb = VideoReformatter()
        self._graph: Any = None
        self._graph_key: tuple[int, int, str] | None = None

    def _resize(self, frame: Any, w: int, h: int) -> np.ndarray:
        fmt = frame.format.name
        if fmt in _SCALE_FIRST:
            small = self._scale.reformat(frame, width=w, height=h, interpolation="BICUBIC", threads=1)
            rgb = self._rgb.reformat(small, format="rgb24", src_colorspace=frame.colorspace,
                                     src_color_range=frame.color_range, threads=1)
        else:
            rgb = self._rgb.reformat(frame, width=w, height=h, format="rgb24", interpolation="BICUBIC",
                                     src_color_range=frame.color_range, threads=1)
        return rgb.to_ndarray()

    def _square(self, frame: Any) -> np.ndarray:
        import av

        key = (frame.width, frame.height, frame.format.name)
        if self._graph_key != key:
            g = av.filter.Graph()
            src = g.add_buffer(width=frame.width, height=frame.height, format=frame.format,
                               time_base=frame.time_base or __import__("fractions").Fraction(1, 1000))
            crop = g.add("crop", "w=min(iw\\,ih):h=min(iw\\,ih):x=(iw-min(iw\\,ih))*0.5:y=(ih-min(iw\\,ih))*0.5")
            scale = g.add("scale", f"{self.size}:{self.size}:flags=bicubic")
            fmt = g.add("format", "rgb24")
            sink = g.add("buffersink")
            g.link_nodes(src, crop, scale, fmt, sink)
            g.configure()
            self._graph, self._graph_key = g, key
        self._graph.push(frame)
        return self._graph.pull().to_ndarray()

    def __call__(self, frame: Any) -> np.ndarray:
        s = self.size
        w, h = frame.width, frame.height
        if self.crop == "center":
            if w <= h:
                rw, rh = s, max(s, round(h * s / w))
            else:
                rw, rh = max(s, round(w * s / h)), s
            arr = self._resize(frame, rw, rh)
            y0, x0 = (rh - s) // 2, (rw - s) // 2
            arr = arr[y0:y0 + s, x0:x0 + s]
        elif self.crop == "resize":
            arr = self._resize(frame, s, s)
        else:
            arr = self._square(frame)
        try:
            rot = frame.rotation
        except Exception:  # pragma: no cover
            rot = 0
        arr = arr.transpose(2, 0, 1)  # planar 3 x S x S: clips then stack without a transpose
        k = int(round((rot or 0) / 90.0)) % 4
        if k:
            arr = np.rot90(arr, k, axes=(1, 2))
        return np.ascontiguousarray(arr)


def check_times(path: str, start: float | None, end: float | None) -> tuple[float, float]:
    """``(start, end)`` seconds checked (``end`` None -> inf); ``VideoError`` naming ``path`` otherwise."""
    s = 0.0 if start is None else float(start)
    e = math.inf if end is None else float(end)
    if math.isnan(s) or math.isnan(e):
        raise VideoError(f"{path}: start/end must be numbers, got start={start!r}, end={end!r}")
    if s < 0 or e < 0:
        raise VideoError(f"{path}: negative time (start={start!r}, end={end!r}); times are seconds from the video start")
    if e <= s:
        raise VideoError(f"{path}: start ({s:g} s) must be before end ({e:g} s)")
    return s, e


class Sampler:
    """Assigns to each requested sample time the frame displayed at that time.

    ``run(times)`` takes an iterator of nondecreasing ``(t, needed)`` and yields, per sample, the
    converted frame (or None where ``needed`` is false, without converting), until the times run
    out or the video ends. Afterwards ``video_end`` is set when the end of the video was reached.
    """

    def __init__(self, video: Video, convert: Converter) -> None:
        self.video = video
        self.convert = convert
        self.video_end: float | None = None
        self.last_array: np.ndarray | None = None
        self.decode_s = 0.0

    def run(self, times: Iterator[tuple[float, bool]], seek: float | None = None) -> Iterator[np.ndarray | None]:
        video = self.video
        pending = next(times, None)
        if pending is None:
            return
        clock = time.perf_counter
        t_dec = clock()
        prev_t = 0.0
        prev_frame: Any = None
        prev_arr: np.ndarray | None = None
        prev_gap: float | None = None

        def samples_before(limit: float) -> Iterator[np.ndarray | None]:
            # every pending sample before ``limit`` shows the previous frame
            nonlocal pending, prev_arr, t_dec
            while pending is not None and pending[0] + _EPS < limit:
                out = None
                if pending[1]:
                    if prev_arr is None:
                        prev_arr = self.convert(prev_frame)
                        self.last_array = prev_arr
                    out = prev_arr
                self.decode_s += clock() - t_dec
                yield out
                t_dec = clock()
                pending = next(times, None)

        frames = video.frames(seek=seek)
        t_dec = clock()
        try:
            for ft, frame in frames:
                if prev_frame is not None:
                    prev_gap = ft - prev_t
                    yield from samples_before(ft)
                    if pending is None:
                        return
                # (samples before the first frame get the first frame)
                prev_t, prev_frame, prev_arr = ft, frame, None
            if prev_frame is None:
                return
            # end of the video: the last frame lasts its duration
            end = prev_t + max(video.frame_duration(prev_frame, prev_gap), 1e-3)
            self.video_end = end
            yield from samples_before(end)
        finally:
            self.decode_s += clock() - t_dec
            frames.close()


def stack_frames(frames: Sequence[np.ndarray]) -> torch.Tensor:
    """``T`` frames (``3 x S x S`` uint8 arrays) as one ``3 x T x S x S`` tensor."""
    return torch.from_numpy(np.stack(frames, axis=1))  # 3 x S x S each -> 3 x T x S x S


def pad_frames(real: list[np.ndarray], num_frames: int, pad: str) -> list[np.ndarray]:
    """``real`` cut or padded to ``num_frames`` frames (``pad``: repeat the last, loop, zeros)."""
    if len(real) >= num_frames:
        return real[:num_frames]
    if pad == "loop":
        return [real[i % len(real)] for i in range(num_frames)]
    if pad == "zeros":  # black frames past the end (the reference evaluation's padding)
        return real + [np.zeros_like(real[-1])] * (num_frames - len(real))
    return real + [real[-1]] * (num_frames - len(real))


def check_common(fps: float, num_frames: int, size: int, stride: int, crop: str, pad: str) -> WindowSettings:
    """The window arguments as ``WindowSettings`` (its checks and ranges, the only ones) and ``pad``."""
    check_pad(pad)
    return WindowSettings.from_values(fps=fps, num_frames=num_frames, size=size, stride=stride, crop=crop)


class ClipReader:
    """The iterator behind ``read_clips`` (one decoding pass, windows in order); exposes
    ``duration``/``header_duration``, ``estimated_windows()`` and decoding stats."""

    def __init__(self, path: str | os.PathLike[str], fps: float = DEFAULT.fps, num_frames: int = DEFAULT.num_frames,
                 size: int = DEFAULT.size, stride: int = DEFAULT.stride, start: float | None = None, end: float | None = None, crop: str = "center",
                 pad: str = "repeat", threads: int = 0, warn: Callable[[str], None] | None = None) -> None:
        self.path = check_path(path)
        ws = self.settings = check_common(fps, num_frames, size, stride, crop, pad)
        self.fps, self.num_frames, self.size, self.stride = float(ws.fps), ws.num_frames, ws.size, ws.stride
        self.crop, self.pad = crop, pad
        self.t0, self.stop = check_times(self.path, start, end)
        self._start_given = start is not None and float(start) > 0
        self.threads = threads
        self.warn = warn or (lambda m: warnings.warn(m, RuntimeWarning, stacklevel=3))
        self.video = Video(self.path, threads=threads, warn=self.warn)
        if self.video.header_duration is not None and self.t0 >= self.video.header_duration + 1.0:
            dur = self.video.header_duration
            self.video.close()
            raise VideoError(f"{self.path}: start ({self.t0:g} s) is past the end of the video ({dur:.3f} s)")
        self.sampler = Sampler(self.video, Converter(self.size, self.crop))
        self.num_samples = 0
        self.num_windows = 0

    @classmethod
    def from_settings(cls, path: str | os.PathLike[str], settings: WindowSettings, pad: str = "repeat", *,
                      start: float | None = None, end: float | None = None, threads: int = 0,
                      warn: Callable[[str], None] | None = None) -> ClipReader:
        """The reader for ``settings`` (``WindowSettings``) and ``pad``."""
        s = settings
        return cls(path, s.fps, s.num_frames, s.size, s.stride, start, end, s.crop, pad, threads=threads, warn=warn)

    @property
    def header_duration(self) -> float | None:
        return self.video.header_duration

    @property
    def duration(self) -> float | None:
        """The video's duration: exact once the end was decoded, else the header's."""
        return self.sampler.video_end if self.sampler.video_end is not None else self.video.header_duration

    def estimated_windows(self) -> int | None:
        dur = self.video.header_duration
        if dur is None:
            return None
        n = max(0, math.ceil((min(dur, self.stop) - self.t0) * self.fps - 1e-9))
        t, s = self.num_frames, self.stride
        full = (n - t) // s + 1 if n >= t else 0
        extra = 1 if full == 0 or (full * s < n and (full - 1) * s + t < n) else 0
        return max(1, full + extra)

    def _times(self) -> Iterator[tuple[float, bool]]:
        t, s = self.num_frames, self.stride
        j = 0
        while True:
            tj = self.t0 + j / self.fps
            if tj >= self.stop - _EPS:
                return
            yield tj, (s <= t or j % s < t)
            j += 1

    def __iter__(self) -> Iterator[Clip]:
        T, S, fps = self.num_frames, self.stride, self.fps
        buf: dict[int, np.ndarray] = {}
        k = 0  # next window to emit
        n = 0
        try:
            for j, arr in enumerate(self.sampler.run(self._times(), seek=self.t0 if self._start_given else None)):
                n = j + 1
                if arr is not None:
                    buf[j] = arr
                if j == k * S + T - 1:  # window k is complete
                    frames = [buf[k * S + i] for i in range(T)]
                    start = self.t0 + k * S / fps
                    yield Clip(round(start, 9), round(start + T / fps, 9), stack_frames(frames))
                    k += 1
                    for key in [key for key in buf if key < k * S]:
                        del buf[key]
            self.num_samples = n
            if n == 0:
                if self.video.last_time is None and self.video.errors == 0:
                    raise VideoError(f"{self.path}: no decodable video frames (zero-length video?)")
                if self.video.last_time is None:
                    raise VideoError(f"{self.path}: no video frame could be decoded (corrupt file)")
                end = self.sampler.video_end
                raise VideoError(f"{self.path}: start ({self.t0:g} s) is past the end of the video "
                                 f"({end if end is not None else self.video.last_time:.3f} s)")
            full = k
            if full == 0 or (full * S < n and (full - 1) * S + T < n):
                real = [buf[key] for key in sorted(buf) if key >= full * S]
                start = self.t0 + full * S / fps
                yield Clip(round(start, 9), round(start + len(real) / fps, 9), stack_frames(pad_frames(real, T, self.pad)))
                k += 1
            self.num_windows = k
            self._check_truncation()
        finally:
            self.video.close()

    def _check_truncation(self) -> None:
        v = self.video
        end, hdr = self.sampler.video_end, v.header_duration
        if v.errors or end is None or hdr is None or self.stop < hdr:
            return
        slack = max(0.5, 2 * (v.period or 0.04))
        if end + slack < hdr:
            self.warn(f"{self.path}: video data ends at {end:.3f} s but the file says {hdr:.3f} s "
                      "(truncated file?); clips cover the readable part")


