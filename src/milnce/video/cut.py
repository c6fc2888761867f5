"""Cutting a span out of a video into a new file (``milnce clip``): ``cut_clip``.

Two modes, never mixed (no re-encoded ends spliced onto copied middles):

- re-encode (default): frames whose presentation time lies in ``[start, end)`` are decoded and
  encoded again (H.264, CRF 18, the source's frame timing kept), the audio is cut at the sample
  and encoded as AAC: an exact cut, seconds of work per minute of clip.
- copy (``copy=True``): the packets from the key frame at or before ``start`` up to ``end`` are
  copied unchanged (video and audio): fast and lossless, but the clip starts at that key frame,
  i.e. early (by up to one GOP, often several seconds); ``ClipResult.start`` says where.

Times count from the video stream's start, as the indexer's decoder counts them
(``milnce.video.seeking``: MPEG-TS/PS and other late-starting files). The source is read from an
already opened file (``milnce clip`` and the server open it by one rule,
``milnce.index.opening.open_indexed_file``: inside the collection roots, no symbolic link
followed out of them, still the indexed file; ``open_checked`` is the root-less check). The
output is written atomically (``milnce.atomic``): the named file is either complete or absent,
nothing else is written. ``ClipLimits`` caps clip length, concurrent cuts and the clips a server
holds on disk.
"""

from __future__ import annotations

import math
import os
import re
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, BinaryIO

import numpy as np

from ..atomic import atomic_file
from ..errors import MilnceError
from ..printable import show_path
from .identity import NOFOLLOW, OPEN_FLAGS, identity_problem
from .seeking import decode_start, keyframe_start, secs, seek, stream_origin

__all__ = ["ClipError", "SourceChangedError", "ClipBusyError", "ClipResult", "ClipLimits", "ClipClaim", "cut_clip",
           "open_checked", "clip_file_name", "check_span", "CONTAINERS"]

# Output containers by extension; all take H.264 + AAC (re-encoding) and copied streams of the
# usual codecs (copying a codec the container cannot hold is a clear error).
CONTAINERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}


class ClipError(MilnceError, ValueError):
    """A clip that cannot be cut: a span outside the video, an unknown output type, a bad file."""


class SourceChangedError(ClipError):
    """The source is no longer the indexed file (moved, deleted, replaced or modified)."""


class ClipBusyError(ClipError):
    """Too many clips are being cut at once (``ClipLimits``)."""


@dataclass
class ClipResult:
    """What ``cut_clip`` wrote: ``start``/``end`` in source seconds (copy mode: from the key frame),
    the clip's ``duration``, number of video ``frames``, whether it has ``audio``."""

    path: str
    start: float
    end: float
    duration: float
    frames: int
    audio: bool
    copy: bool


def open_checked(path: str, size: int, mtime: float) -> BinaryIO:
    """Open ``path`` for reading only if it is still the indexed file: not a symbolic link (opened
    with ``O_NOFOLLOW``, and ``O_NONBLOCK`` so a FIFO cannot hang), a regular file with the recorded
    ``size`` and ``mtime`` (``milnce.video.identity``, the check file serving uses). Raises
    ``SourceChangedError`` (with "re-run milnce index")."""
    try:
        fd = os.open(path, OPEN_FLAGS | NOFOLLOW)
    except FileNotFoundError:
        raise SourceChangedError(f"{show_path(path)}: the indexed video is gone (moved or deleted; re-run milnce index)") from None
    except OSError as exc:
        raise SourceChangedError(f"{show_path(path)} cannot be opened as the indexed file ({exc.strerror or exc}; "
                                 "re-run milnce index)") from None
    try:
        problem = identity_problem(os.fstat(fd), size, mtime)
        if problem is not None:
            raise SourceChangedError(f"{show_path(path)} {problem}; re-run milnce index")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def check_span(start: float, end: float, duration: float, padding: float = 0.0,
               max_seconds: float | None = None) -> tuple[float, float]:
    """The span to cut, ``[start - padding, end + padding]`` clipped to ``[0, duration]``; a
    ``ClipError`` for a span that is not finite, empty, outside the video or longer than
    ``max_seconds``. The end may pass ``duration`` by 10 ms (rounded durations)."""
    vals = (start, end, padding, duration)
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in vals):
        raise ClipError(f"clip times must be finite numbers of seconds, got {start!r}-{end!r} (padding {padding!r})")
    if padding < 0:
        raise ClipError(f"--padding must be >= 0 seconds, got {padding:g}")
    if start < 0 or end <= start:
        raise ClipError(f"the span {start:g}-{end:g} s is empty or negative: END must be after START >= 0")
    if duration <= 0 or start >= duration or end > duration + 0.01:
        raise ClipError(f"the span {start:g}-{end:g} s is outside the video ({duration:.2f} s long)")
    a, b = max(0.0, start - padding), min(duration, end + padding)
    if max_seconds is not None and b - a > max_seconds:
        raise ClipError(f"the clip would be {b - a:.1f} s long; at most {max_seconds:g} s are allowed")
    return a, b


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _stamp(t: float) -> str:
    m, s = divmod(round(t * 100) / 100, 60)
    h, m = divmod(int(m), 60)
    return (f"{h}h" if h else "") + f"{m:02d}m{s:05.2f}s"


def clip_file_name(source: str, start: float, end: float, ext: str = ".mp4") -> str:
    """A file name saying the source and the span, e.g. ``cooking_00m12.50s-00m20.00s.mp4`` (only
    ``[A-Za-z0-9._-]``, no leading dot, so it is a plain name in the chosen folder)."""
    stem = os.path.splitext(os.path.basename(source))[0]
    stem = _UNSAFE.sub("_", stem).lstrip(".")[:80] or "clip"
    return f"{stem}_{_stamp(start)}-{_stamp(end)}{ext}"


class ClipLimits:
    """Caps for a server: clips of at most ``max_seconds``; at most ``max_concurrent`` cuts at
    once (``slot()`` raises ``ClipBusyError`` instead of queueing); on disk, at most ``max_files``
    clips (being cut or cut and waiting to be sent) holding at most ``max_bytes`` together
    (``claim()``); a finished clip is sent within ``send_timeout`` seconds or dropped."""

    def __init__(self, max_seconds: float = 300.0, max_concurrent: int = 2, *, max_files: int = 4,
                 max_bytes: int = 1 << 30, send_timeout: float = 300.0) -> None:
        self.max_seconds = float(max_seconds)
        self._sem = threading.BoundedSemaphore(max(1, int(max_concurrent)))
        self.max_files = max(1, int(max_files))
        self.max_bytes = max(1, int(max_bytes))
        self.send_timeout = float(send_timeout)
        self._lock = threading.Lock()
        self.files = 0  # clips claimed: being cut, or on disk waiting to be sent
        self.bytes = 0  # bytes those clips hold on disk

    @contextmanager
    def slot(self) -> Iterator[None]:
        if not self._sem.acquire(blocking=False):
            raise ClipBusyError("too many clips are being cut right now; try again in a moment")
        try:
            yield
        finally:
            self._sem.release()

    def claim(self) -> ClipClaim:
        """Count one more clip on disk; ``ClipBusyError`` when ``max_files`` clips are held or
        their bytes reached ``max_bytes``. Release it with ``ClipClaim.release`` once the file is gone."""
        with self._lock:
            if self.files >= self.max_files or self.bytes >= self.max_bytes:
                raise ClipBusyError(f"too many clips are waiting to be sent ({self.files} clips, "
                                    f"{self.bytes / 2**20:.1f} MiB on disk); try again in a moment")
            self.files += 1
        return ClipClaim(self)


class ClipClaim:
    """One clip counted by ``ClipLimits.claim``: ``add(nbytes)`` once it is written, ``release()``
    (idempotent) once it is removed."""

    def __init__(self, limits: ClipLimits) -> None:
        self._limits, self._bytes, self._open = limits, 0, True

    def add(self, nbytes: int) -> None:
        """Count the clip's ``nbytes``; ``ClipBusyError`` (the claim released) when the clips on
        disk would then hold more than ``max_bytes``."""
        lim = self._limits
        with lim._lock:
            if lim.bytes + nbytes > lim.max_bytes:
                over = True
            else:
                over, lim.bytes, self._bytes = False, lim.bytes + nbytes, self._bytes + nbytes
        if over:
            self.release()
            raise ClipBusyError(f"the clips waiting to be sent would hold more than {lim.max_bytes / 2**20:.0f} MiB; "
                                "try again in a moment (or ask for a shorter clip)")

    def release(self) -> None:
        lim = self._limits
        with lim._lock:
            if self._open:
                self._open = False
                lim.files -= 1
                lim.bytes -= self._bytes
                self._bytes = 0


def _container_format(out: str) -> str:
    ext = os.path.splitext(out)[1].lower()
    fmt = CONTAINERS.get(ext)
    if fmt is None:
        raise ClipError(f"{show_path(out)}: the clip's file must end in one of {', '.join(sorted(CONTAINERS))}")
    return fmt


def cut_clip(src: str | os.PathLike[str] | BinaryIO, start: float, end: float, out: str | os.PathLike[str], *,
             copy: bool = False, padding: float = 0.0, duration: float | None = None,
             limits: ClipLimits | None = None, overwrite: bool = False, name: str | None = None) -> ClipResult:
    """Cut ``[start - padding, end + padding)`` seconds of ``src`` (a path or an open binary file,
    e.g. from ``open_checked``) into ``out`` (``.mp4``/``.m4v``/``.mov``/``.mkv``), re-encoded
    (exact) or, with ``copy``, stream-copied from the previous key frame. ``duration``: the
    video's duration (else read from the file). ``limits``: length cap and concurrency slot.
    ``name``: the source as error messages name it (default: the path, or the open file's name).
    Times count from the video stream's start, as the indexer counts them. Refuses an existing
    ``out`` unless ``overwrite``; writes nothing else."""
    import av

    out = os.fspath(out)
    fmt = _container_format(out)
    if os.path.isdir(out) or (os.path.lexists(out) and not overwrite):
        raise ClipError(f"{show_path(out)} exists (choose another --out, or overwrite it)")
    folder = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(folder):
        raise ClipError(f"{show_path(folder)}: no such folder for the clip")
    given = src if isinstance(src, (str, os.PathLike)) else getattr(src, "name", None)
    given = os.fsdecode(given) if isinstance(given, (str, bytes, os.PathLike)) else None
    if name is None:  # an open file's name may be its descriptor number: say "video" then
        name = given or "video"

    def _said(text: str) -> str:  # the decoder's words, naming the source as ``name``, printable
        return show_path(text.replace(given, name) if given and name else text)

    name = show_path(name)
    _refuse_overwriting_source(src, out)
    try:
        container = av.open(os.fspath(src) if isinstance(src, (str, os.PathLike)) else src, "r")
    except (av.FFmpegError, OSError) as exc:
        raise ClipError(f"{name}: cannot read the video ({_said(str(exc))})") from None
    with container:
        if not container.streams.video:
            raise ClipError(f"{name}: no video stream")
        vin = container.streams.video[0]
        origin = stream_origin(container, vin)
        if duration is None:
            duration = _duration(container, origin)
        a, b = check_span(float(start), float(end), float(duration), float(padding),
                          limits.max_seconds if limits else None)
        lock = limits.slot() if limits else _nullslot()
        with lock, atomic_file(out) as f:
            try:
                with av.open(f, "w", format=fmt) as dst:
                    res = (_copy(container, dst, a, b, origin) if copy
                           else _reencode(container, dst, a, b, origin))
            except ClipError:
                raise
            except (av.FFmpegError, ValueError) as exc:
                reason = _reason(exc, copy).replace(str(getattr(f, "name", "") or out), out)
                raise ClipError(f"{name}: cannot cut the clip ({_said(reason)})") from None
    return ClipResult(path=out, start=res[0], end=b, duration=b - res[0], frames=res[1], audio=res[2], copy=copy)


def _reason(exc: BaseException, copy: bool) -> str:
    """The decoder's or muxer's words; in copy mode with the hint to re-encode (most copy failures
    are a codec the output container cannot hold: flv1, gif, rawvideo, theora, mu-law audio...)."""
    text = str(exc)
    if type(exc).__name__ == "UnknownCodecError":
        text = f"the {text} codec cannot be written"
    if copy:
        text += ("; the streams cannot be copied unchanged into this container: leave out --copy to "
                 "re-encode (H.264 + AAC)")
    return text


def _refuse_overwriting_source(src: str | os.PathLike[str] | BinaryIO, out: str) -> None:
    try:
        so = os.stat(out)
        ss = os.stat(src) if isinstance(src, (str, os.PathLike)) else os.fstat(src.fileno())
    except (OSError, AttributeError, ValueError):
        return
    if (so.st_dev, so.st_ino) == (ss.st_dev, ss.st_ino):
        raise ClipError(f"{show_path(out)} is the source video itself; choose another --out")


@contextmanager
def _nullslot() -> Iterator[None]:
    yield


def _duration(container: Any, origin: float = 0.0) -> float:
    """The video's duration from its start (``origin``), from the headers."""
    s = container.streams.video[0]
    if s.duration is not None and s.time_base is not None and s.duration > 0:
        return float(s.duration * s.time_base)
    if container.duration is not None:
        begin = float(container.start_time) / 1_000_000 if container.start_time is not None else 0.0
        return begin + float(container.duration) / 1_000_000 - origin
    raise ClipError("the video's duration is unknown; pass it")


def _reencode(src: Any, dst: Any, a: float, b: float, origin: float = 0.0) -> tuple[float, int, bool]:
    """Decode frames and audio samples in ``[a, b)`` (seconds from ``origin``, the video's start),
    encode them with times from 0."""
    import av

    sa, sb = a + origin, b + origin  # source times

    vin = src.streams.video[0]
    ain = src.streams.audio[0] if src.streams.audio else None
    vtb = vin.time_base or Fraction(1, 90000)
    rate = vin.average_rate or vin.guessed_rate or Fraction(25)
    vout = dst.add_stream("libx264", rate=rate, options={"crf": "18", "preset": "veryfast"})
    vout.time_base = vtb
    vout.codec_context.time_base = vtb
    cc = vin.codec_context
    # 4:2:0 wants even sizes, at least 2 x 2 (a 1 pixel wide video is stretched to 2)
    vout.width, vout.height = max(2, cc.width - cc.width % 2), max(2, cc.height - cc.height % 2)
    vout.pix_fmt = "yuv420p"
    aout = resampler = fifo = None
    if ain is not None:
        sr = _aac_rate(ain.codec_context.sample_rate or 44100)
        layout = _layout(ain.codec_context.layout)
        aout = dst.add_stream("aac", rate=sr, layout=layout)
        resampler = av.AudioResampler(format="fltp", layout=layout, rate=sr)
        fifo = av.AudioFifo()
    seek(src, vin, decode_start(src, vin, sa))
    streams = [vin] + ([ain] if ain is not None else [])
    frames, rotation_set, offset = 0, False, round(sa / vtb)
    video_done = audio_done = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for packet in src.demux(streams):
            if video_done and (audio_done or ain is None):
                break
            try:
                decoded = packet.decode()
            except av.FFmpegError:
                if frames:  # damaged data inside the span: the cut fails
                    raise
                continue  # landed inside a group of pictures: its first packets cannot be decoded
            for frame in decoded:
                if isinstance(frame, av.VideoFrame):
                    t = secs(frame.pts, frame.time_base or vtb)
                    if t is None or t < sa - 1e-6:
                        continue
                    if t >= sb - 1e-6:
                        video_done = True
                        continue
                    if not rotation_set and frame.rotation:
                        vout.set_display_rotation(frame.rotation)
                    rotation_set = True
                    _encode_video(dst, vout, frame, offset, vtb)
                    frames += 1
                elif aout is not None and resampler is not None and fifo is not None:
                    audio_done = _feed_audio(dst, aout, resampler, fifo, frame, sa, sb) or audio_done
        for p in vout.encode():
            dst.mux(p)
        if aout is not None and fifo is not None:
            _drain_audio(dst, aout, fifo, final=True)
    if frames == 0:
        raise ClipError(f"no video frames in {a:g}-{b:g} s")
    return a, frames, aout is not None


# Sample rates the AAC encoder takes; other rates (192 kHz PCM, odd rates) are resampled.
_AAC_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)


def _aac_rate(rate: int) -> int:
    """``rate`` if AAC can carry it, else the nearest rate it can (at most 48 kHz)."""
    return rate if rate in _AAC_RATES else min(_AAC_RATES, key=lambda r: (abs(r - rate), -r))


def _layout(layout: Any) -> str:
    """The source's channel layout by name; one without a channel order ("1 channels") becomes
    mono or stereo (the AAC encoder refuses unordered layouts), more channels 5.1 at most."""
    if layout is None:
        return "stereo"
    n = int(getattr(layout, "nb_channels", 0) or len(getattr(layout, "channels", ())) or 2)
    name = str(layout.name)
    if "channels" not in name and n <= 6:
        return name
    return {1: "mono", 2: "stereo", 3: "3.0", 4: "quad", 5: "5.0", 6: "5.1"}.get(n, "stereo")


def _encode_video(dst: Any, vout: Any, frame: Any, offset: int, vtb: Fraction) -> None:
    import av

    pts = int(round(frame.pts * (frame.time_base or vtb) / vtb)) - offset
    img = frame
    if frame.width != vout.width or frame.height != vout.height or frame.format.name != "yuv420p":
        img = frame.reformat(width=vout.width, height=vout.height, format="yuv420p")
    img.pts, img.time_base = pts, vtb
    img.pict_type = av.video.frame.PictureType.NONE  # the encoder picks the key frames
    for p in vout.encode(img):
        dst.mux(p)


def _feed_audio(dst: Any, aout: Any, resampler: Any, fifo: Any, frame: Any, a: float, b: float) -> bool:
    """Resample one decoded audio frame, keep its samples inside ``[a, b)``; True once past ``b``."""
    import av

    t0 = secs(frame.pts, frame.time_base)
    if t0 is None:
        return False
    for r in resampler.resample(frame):
        sr = r.sample_rate
        t = t0 if r.pts is None or r.time_base is None else float(r.pts * r.time_base)
        arr = r.to_ndarray()
        n = arr.shape[1]
        i0 = max(0, math.ceil((a - t) * sr - 1e-6))
        i1 = min(n, math.ceil((b - t) * sr - 1e-6))
        if i1 > i0:
            piece = av.AudioFrame.from_ndarray(np.ascontiguousarray(arr[:, i0:i1]), format="fltp", layout=r.layout.name)
            piece.sample_rate, piece.pts = sr, None
            fifo.write(piece)
            _drain_audio(dst, aout, fifo)
        if t + n / sr >= b:
            return True
    return False


def _drain_audio(dst: Any, aout: Any, fifo: Any, final: bool = False) -> None:
    size = aout.codec_context.frame_size or 1024
    while fifo.samples >= size or (final and fifo.samples):
        chunk = fifo.read(min(size, fifo.samples))
        chunk.pts = None
        for p in aout.encode(chunk):
            dst.mux(p)
    if final:
        for p in aout.encode():
            dst.mux(p)


def _copy(src: Any, dst: Any, a: float, b: float, origin: float = 0.0) -> tuple[float, int, bool]:
    """Copy the packets from the key frame at or before ``a`` up to ``b``, times from that key frame.

    Video packets are copied in decode order while their decode time is before ``b``; after that
    only those that fill a gap before the latest frame copied (B-frames), so the clip may end a
    few frames after ``b`` but never skips a frame. Frames shown before the key frame (open GOP
    leading pictures) are dropped: they reference the previous GOP."""
    vin = src.streams.video[0]
    ain = src.streams.audio[0] if src.streams.audio else None
    vout = dst.add_stream_from_template(vin)
    aout = dst.add_stream_from_template(ain) if ain is not None else None
    found = keyframe_start(src, vin, a + origin)
    if found is None:
        raise ClipError(f"no key frame at or before {a:g} s to copy from (use re-encoding)")
    target, key = found
    a, b = a + origin, b + origin  # source times from here on
    seek(src, vin, target)
    start: float | None = None
    last_shown = -math.inf
    frames, video_done, audio_done = 0, False, ain is None
    pending_audio: list[Any] = []
    for packet in src.demux([vin] + ([ain] if ain is not None else [])):
        if video_done and audio_done:
            break
        if packet.dts is None and packet.pts is None:
            continue  # flush packet
        t = secs(packet.pts if packet.pts is not None else packet.dts, packet.time_base)
        td = secs(packet.dts if packet.dts is not None else packet.pts, packet.time_base)
        assert t is not None and td is not None
        if packet.stream is vin and not video_done:
            if start is None:
                if not packet.is_keyframe or t < key - 1e-6:
                    continue
                if t > a + 1e-6:
                    raise ClipError(f"no key frame at or before {a - origin:g} s to copy from (use re-encoding)")
                start = t
                for p in pending_audio:  # audio demuxed before the key frame that belongs after it
                    if float(p.pts * p.time_base) >= start and aout is not None:
                        _mux_shifted(dst, aout, p, start)
                pending_audio = []
            if t < start - 1e-6 or (td >= b - 1e-6 and t >= last_shown):
                video_done = td >= b - 1e-6
                continue
            last_shown = max(last_shown, t)
            _mux_shifted(dst, vout, packet, start)
            frames += 1
        elif packet.stream is not vin and aout is not None and not audio_done:
            if t >= b - 1e-6:
                audio_done = True
            elif start is None:
                if packet.pts is not None and t >= key - 1e-6:
                    pending_audio.append(packet)
            elif t >= start:
                _mux_shifted(dst, aout, packet, start)
    if start is None or frames == 0:
        raise ClipError(f"no video to copy in {a - origin:g}-{b - origin:g} s")
    return start - origin, frames, aout is not None


def _mux_shifted(dst: Any, out_stream: Any, packet: Any, start: float) -> None:
    shift = int(round(start / packet.time_base))
    if packet.pts is not None:
        packet.pts -= shift
    if packet.dts is not None:
        packet.dts -= shift
    packet.stream = out_stream
    dst.mux(packet)
