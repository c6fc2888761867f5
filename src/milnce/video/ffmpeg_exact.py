"""Frames exactly as the reference pipelines got them from the ``ffmpeg`` command line.

Two reference loaders shell out to ``ffmpeg ... -filter_complex ... -f rawvideo -pix_fmt rgb24``
(through the ``ffmpeg-python`` package, which always builds a ``-filter_complex`` graph):

* **feature extractors** (HowTo100M's ``video_feature_extractor``, MMPT's copy of it, UniVL's
  ``VideoFeatureExtractor``): ``fps=F`` -> ``scale=W:H`` with ``(W, H)`` from ffprobe's *coded*
  ``width``/``height``: the short side becomes ``size`` and the long side ``int(L * size / S)``
  -> ``crop=size:size:int((W-size)/2):int((H-size)/2)``; the whole video in one command.
  ``ffmpeg_chunks`` reproduces it.
* **MIL-NCE evaluation loaders** (YouCook2 / MSR-VTT): ``-ss start -t T/fps+0.1`` on the input
  -> ``fps=F`` -> ``crop=min(iw,ih):min(iw,ih):(iw-min(iw,ih))*0.5:(ih-min(iw,ih))*0.5`` ->
  ``scale=size:size``; the first ``T`` frames, zero-padded. ``ffmpeg_window`` reproduces it.

Where each rule comes from (FFmpeg 5.x sources; checked against the ``ffmpeg`` binary by
``tests/video/test_ffmpeg_exact.py``):

* Timestamps. The CLI shifts every packet by ``-(file start time)`` (``ffmpeg_demux``/
  ``ffmpeg.c``: ``ts_offset = -ic->start_time``, the earliest start over *all* streams, so a
  video stream that starts after its audio keeps that gap), and with ``-ss`` also by
  ``-start`` (input seeking). Here: ``pts + rescale(offset_us, 1/1e6, time_base)``, integer
  arithmetic with round-half-away like ``av_rescale_q``.
* ``-ss`` is accurate (``-accurate_seek`` default): seek to the keyframe before, decode, and a
  ``trim`` filter drops frames whose shifted time is ``< 0``; ``-t D`` (also ``trim``) ends the
  stream at the first frame whose time minus the first kept frame's time is ``>= D``; that end
  carries no timestamp, so the ``fps`` filter emits nothing more after it (``vf_trim.c``).
* ``fps`` filter (``vf_fps.c``, ``round=near``, ``eof_action=round``, no ``start_time``): each
  input time is rounded to the nearest output tick (``av_rescale_q_rnd`` ``NEAR_INF``); the
  first output tick is the first frame's tick; tick ``n`` shows the last frame whose tick is
  ``<= n``; at the end of the input, ticks continue up to (excluding) the rounded end time,
  which the CLI sets to the last frame's time plus its duration (the packet duration, else the
  codec frame rate; ``ffmpeg.c`` ``send_filter_eof``). Variable frame rate follows from that.
* Constant frame rate output: the ``rawvideo`` muxer has neither ``AVFMT_VARIABLE_FPS`` nor
  ``AVFMT_NOTIMESTAMPS`` semantics that allow gaps, so ``-vsync auto`` is ``cfr``
  (``ffmpeg_mux``/``do_video_out``): when the first output tick ``p0`` is after 0, the first
  frame is emitted ``p0 + 1`` times (the gap before the video is filled with its first frame).
* Autorotation (``-autorotate`` default): the display matrix's angle ``theta`` (``-round(
  av_display_rotation_get)``, in [0, 360)) inserts ``transpose=clock`` (90),
  ``hflip,vflip`` (180) or ``transpose=cclock`` (270) *before* the user's graph. The feature
  extractors size ``scale`` from ffprobe's coded (unrotated) width/height, so a rotated
  portrait video is squashed to the landscape size and cropped off-centre: reproduced on
  purpose (that is what the consumers' features saw).
* ``scale``: libswscale with the default flags (``bicubic``), in the decoder's pixel format;
  ``crop``: offsets evaluated as doubles, truncated to int, then rounded *down* to the chroma
  subsampling (even for 4:2:0; ``vf_crop.c`` without ``exact=1``); then the conversion to
  ``rgb24`` that the output format forces (an auto-inserted ``scale``). All three run here in
  the same libavfilter graph (PyAV's bundled FFmpeg), so pixels match an ``ffmpeg`` binary up
  to version differences of libswscale (the tests state the tolerance).
* Padding: the feature extractors zero-pad the frame count to a multiple of the chunk length
  (``Preprocessing._zero_pad``) and cut consecutive chunks; the evaluation loaders zero-pad to
  ``T`` frames. Black frames are zeros in RGB.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from ..errors import UsageError
from .decode import Video, VideoError, check_path

__all__ = ["Chunk", "ffmpeg_chunks", "ffmpeg_frames", "ffmpeg_window", "scale_size", "rotation_of", "fps_ticks"]

GEOMETRIES = ("center", "square")
_MAX_SCALED = 16384  # longest scaled side accepted (a 1 x 4000 video would need 224 x 896000 px)


@dataclass
class Chunk:
    """``frames``: uint8 ``T x S x S x 3`` (RGB); ``real``: frames that are not padding;
    ``start``/``end``: seconds (``index * T / fps``, ``start + real / fps``)."""

    index: int
    start: float
    end: float
    frames: np.ndarray
    real: int


def scale_size(width: int, height: int, size: int) -> tuple[int, int]:
    """``(W, H)`` of the feature extractors' ``scale``: short side ``size``, long side
    ``int(L * size / S)`` (``_get_output_dim``; a square video stays square)."""
    if height >= width:
        return size, int(height * size / width)
    return int(width * size / height), size


def rotation_of(frame: Any) -> int:
    """The CLI's autorotation angle of a decoded frame: 0, 90, 180 or 270 (``get_rotation``)."""
    try:
        rot = frame.rotation  # av_display_rotation_get: counter-clockwise degrees
    except Exception:  # noqa: BLE001 - no display matrix
        return 0
    if not rot:
        return 0
    theta = -round(float(rot))
    theta -= 360 * math.floor(theta / 360 + 0.9 / 360)
    for a in (90, 180, 270):
        if abs(theta - a) < 1.0:
            return a
    return 0


def _rnd(x: Fraction) -> int:
    """Round half away from zero (``AV_ROUND_NEAR_INF``)."""
    return int(math.floor(x + Fraction(1, 2))) if x >= 0 else -int(math.floor(-x + Fraction(1, 2)))


def fps_ticks(items: Iterable[tuple[Fraction, Any]], fps: Fraction, end: Callable[[], Fraction | None]
              ) -> Iterator[tuple[Any, int]]:
    """The ``fps`` filter + CFR output: ``(payload, copies)`` runs for input ``(time_s, payload)``.

    ``end()`` (called once the input is exhausted) gives the end time (None: no flush)."""
    buf: list[tuple[int, Any]] = []
    nxt: int | None = None
    first = True

    def emit(p: Any) -> Iterator[tuple[Any, int]]:
        nonlocal nxt, first
        assert nxt is not None
        copies = 1
        if first:
            first = False
            if nxt > 0:  # CFR output: the first frame fills the gap from 0
                copies += nxt
        nxt += 1
        yield p, copies

    for t, payload in items:
        tick = _rnd(t * fps)
        if nxt is None:
            nxt = tick
        buf.append((tick, payload))
        while len(buf) == 2:
            if buf[1][0] <= nxt:
                buf.pop(0)
            else:
                yield from emit(buf[0][1])
    stop_t = end()
    if stop_t is None or nxt is None:
        return
    stop = _rnd(stop_t * fps)
    while buf and nxt < stop:
        if len(buf) == 2 and buf[1][0] <= nxt:
            buf.pop(0)
            continue
        yield from emit(buf[0][1])


class _Graph:
    """rotation -> (scale -> crop | crop -> scale) -> rgb24, one libavfilter graph per input geometry."""

    def __init__(self, size: int, geometry: str) -> None:
        self.size, self.geometry = size, geometry
        self.key: tuple[Any, ...] | None = None
        self.graph: Any = None
        self.coded: tuple[int, int] | None = None  # ffprobe's width/height (first frame, unrotated)

    def _build(self, frame: Any, rot: int) -> None:
        import av

        s = self.size
        g = av.filter.Graph()
        nodes = [g.add_buffer(width=frame.width, height=frame.height, format=frame.format,
                              time_base=frame.time_base or Fraction(1, 1000))]
        if rot == 90:
            nodes.append(g.add("transpose", "clock"))
        elif rot == 180:
            nodes += [g.add("hflip"), g.add("vflip")]
        elif rot == 270:
            nodes.append(g.add("transpose", "cclock"))
        if self.geometry == "center":
            assert self.coded is not None
            w, h = scale_size(*self.coded, s)
            if w < s or h < s or max(w, h) > _MAX_SCALED:
                raise VideoError(f"cannot cut a {s}x{s} crop from the {w}x{h} frame the reference scales "
                                 f"{self.coded[0]}x{self.coded[1]} to (aspect ratio out of range)")
            nodes.append(g.add("scale", f"{w}:{h}"))
            nodes.append(g.add("crop", f"{s}:{s}:{int((w - s) / 2.0)}:{int((h - s) / 2.0)}"))
        else:
            nodes.append(g.add("crop", "w=min(iw\\,ih):h=min(iw\\,ih):x=(iw-min(iw\\,ih))*0.5:y=(ih-min(iw\\,ih))*0.5"))
            nodes.append(g.add("scale", f"{s}:{s}"))
        nodes += [g.add("format", "rgb24"), g.add("buffersink")]
        g.link_nodes(*nodes)
        g.configure()
        self.graph = g

    def __call__(self, frame: Any) -> np.ndarray:
        rot = rotation_of(frame)
        if self.coded is None:
            self.coded = (frame.width, frame.height)
        key = (frame.width, frame.height, frame.format.name, rot)
        if key != self.key:  # the CLI reconfigures its graph when the input changes
            self._build(frame, rot)
            self.key = key
        self.graph.push(frame)
        return np.ascontiguousarray(self.graph.pull().to_ndarray())


def _open(path: str, threads: int, warn: Callable[[str], None] | None) -> tuple[Video, Fraction, int]:
    """The open stream, its time base, and the CLI's offset (microseconds) for the file start."""
    import av

    v = Video(check_path(path), threads=threads, warn=warn)
    tb = Fraction(v.stream.time_base) if v.stream.time_base else Fraction(1, 1_000_000)
    c = v.container
    start_us = int(c.start_time) if c.start_time is not None else 0
    if c.start_time is None and v.stream.start_time is not None:
        start_us = _rnd(Fraction(v.stream.start_time) * tb * av.time_base)
    return v, tb, start_us


def _frame_duration(frame: Any, tb: Fraction, video: Video) -> Fraction:
    d = frame.duration
    if d:
        return Fraction(int(d)) * tb
    rate = video.stream.codec_context.framerate or video.stream.guessed_rate or video.stream.average_rate
    return Fraction(1) / Fraction(rate) if rate else Fraction(0)


def ffmpeg_frames(path: str, fps: float, size: int, geometry: str = "center", *, seek: float | None = None,
                  duration: float | None = None, threads: int = 1, warn: Callable[[str], None] | None = None
                  ) -> Generator[tuple[np.ndarray, int], None, None]:
    """``(rgb S x S x 3, copies)`` runs of the frames ``ffmpeg`` would write, in order.

    ``seek``/``duration``: the input options ``-ss``/``-t`` (seconds). Raises ``VideoError``
    for unreadable input; ``warn`` receives messages about corrupt or truncated data."""
    if geometry not in GEOMETRIES:
        raise UsageError(f"ffmpeg-exact geometry must be one of {', '.join(GEOMETRIES)}, got {geometry!r}")
    video, tb, start_us = _open(path, threads, warn)
    off_us = -start_us - (_rnd(Fraction(seek) * 1_000_000) if seek else 0)
    off = _rnd(Fraction(off_us) * Fraction(1, 1_000_000) / tb)  # av_rescale_q(ts_offset, AV_TIME_BASE_Q, tb)
    fps_q = Fraction(fps).limit_denominator(1_000_000)
    graph = _Graph(int(size), geometry)
    state: dict[str, Any] = {"end": None, "cut": False}

    dur_q = None if duration is None else Fraction(duration).limit_denominator(10**9)

    def raw() -> Iterator[Any]:
        frames = (f for f in video._raw_frames() if f.pts is not None)
        if not seek:
            return frames
        try:
            video.container.seek(max(0, int((Fraction(seek) + Fraction(start_us, 1_000_000)) / tb)),
                                 stream=video.stream, backward=True, any_frame=False)
        except Exception:  # noqa: BLE001 - cannot seek: decode from the start
            video.reopen()
            return (f for f in video._raw_frames() if f.pts is not None)
        frames = (f for f in video._raw_frames() if f.pts is not None)
        head = next(frames, None)
        if head is None or (head.pts + off) * tb > 0:  # landed after the target: decode from the start
            video.reopen()
            return (f for f in video._raw_frames() if f.pts is not None)
        return itertools.chain([head], frames)

    def items() -> Iterator[tuple[Fraction, Any]]:
        first_kept: Fraction | None = None
        for frame in raw():
            t = Fraction(frame.pts + off) * tb
            if seek and t < 0:
                continue  # trim: before the start
            if dur_q is not None:
                if first_kept is None:
                    first_kept = t
                elif t - first_kept >= dur_q:
                    state["cut"] = True
                    return
            state["end"] = t + _frame_duration(frame, tb, video)
            yield t, frame

    try:
        for frame, copies in fps_ticks(items(), fps_q, lambda: None if state["cut"] else state["end"]):
            yield graph(frame), copies
    except VideoError:
        raise
    except Exception as exc:  # noqa: BLE001 - a filter or conversion error on odd input
        import av

        if isinstance(exc, (av.error.FFmpegError, ValueError)):
            raise VideoError(f"{path}: cannot convert frames ({exc})") from exc
        raise
    finally:
        video.close()


def ffmpeg_chunks(path: str, fps: float, size: int, frames_per_chunk: int, *, threads: int = 1,
                  warn: Callable[[str], None] | None = None) -> Iterator[Chunk]:
    """Consecutive ``frames_per_chunk``-frame chunks of the whole video, as the feature extractors
    cut them (the last one zero-padded). Raises ``VideoError`` when no frame can be decoded."""
    T, s = int(frames_per_chunk), int(size)
    buf = np.zeros((T, s, s, 3), np.uint8)
    n = k = 0
    for rgb, copies in ffmpeg_frames(path, fps, s, "center", threads=threads, warn=warn):
        for _ in range(copies):
            buf[n] = rgb
            n += 1
            if n == T:
                yield Chunk(k, k * T / fps, (k + 1) * T / fps, buf.copy(), T)
                k += 1
                n = 0
    if n:
        buf[n:] = 0
        yield Chunk(k, k * T / fps, (k * T + n) / fps, buf.copy(), n)
    elif k == 0:
        raise VideoError(f"{path}: no decodable video frames")


def ffmpeg_window(path: str, start: float, num_frames: int, fps: float, size: int, *, threads: int = 1,
                  warn: Callable[[str], None] | None = None) -> tuple[np.ndarray, int]:
    """The evaluation loaders' window at ``start``: ``(T x S x S x 3 uint8, real frames)``."""
    T = int(num_frames)
    out = np.zeros((T, size, size, 3), np.uint8)
    n = 0
    dur = T / fps + 0.1
    gen = ffmpeg_frames(path, fps, size, "square", seek=float(start) if start > 0 else None, duration=dur,
                        threads=threads, warn=warn)
    try:
        for rgb, copies in gen:
            for _ in range(copies):
                if n < T:
                    out[n] = rgb
                    n += 1
            if n >= T:
                break
    finally:
        gen.close()
    return out, n
