"""Where clip times start and how a cut finds its first frame (``milnce.video.cut``).

Clip times count from the video stream's start, as the indexer's decoder (``milnce.video.decode``)
counts them: ``stream_origin`` is that start in source seconds (MPEG-TS/PS files start at ~1.4 s,
a video may start after its audio). Seeking lands where the container's index, or a search on
time stamps, says: MP4/MKV on the key frame at or before the target, MPEG-TS/PS near it, often
after it; so a cut checks where it landed and seeks earlier (``BACKOFF``) until it is at or
before the span.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from fractions import Fraction
from typing import Any

__all__ = ["stream_origin", "seek", "decode_start", "keyframe_start", "secs", "BACKOFF"]


def stream_origin(container: Any, vin: Any) -> float:
    """Time 0 of clip times in source seconds: the video stream's start time, as the indexer's
    decoder (``milnce.video.decode``) counts it (else its first frame's time). MPEG-TS/PS
    files start at 1.4 s or so, a video that starts after its audio later than 0."""
    if vin.start_time is not None and vin.time_base:
        return float(vin.start_time * vin.time_base)
    for packet in container.demux(vin):
        if packet.pts is not None and packet.time_base is not None:
            return float(packet.pts * packet.time_base)
    return 0.0


# Seeking lands where the container's index (or a search on time stamps) says: MP4/MKV on the
# key frame at or before the target, MPEG-TS/PS somewhere near it (often after it). A cut seeks
# this many seconds earlier each time it landed too late; ``inf`` is the start of the file.
BACKOFF = (0.0, 1.0, 5.0, 30.0, math.inf)


def seek(src: Any, vin: Any, target: float) -> None:
    """Seek to ``target`` source seconds (at or before it, if the container can), or the start."""
    tb = vin.time_base or Fraction(1, 90000)
    src.seek(max(0, int(target / tb)) if math.isfinite(target) else 0, stream=vin, backward=True, any_frame=False)


def decode_start(src: Any, vin: Any, a: float) -> float:
    """A seek target (source seconds) from which decoding shows a frame at or before ``a``."""
    for back in BACKOFF:
        target = a - back if math.isfinite(back) else -math.inf
        seek(src, vin, target)
        first = next((f for f in _video_frames(src, vin)), None)
        if first is None and not math.isfinite(target):
            break
        t = None if first is None else secs(first.pts, first.time_base or vin.time_base)
        if t is not None and t <= a + 1e-6:
            return target
    return -math.inf


def _video_frames(src: Any, vin: Any) -> Iterator[Any]:
    import av

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for packet in src.demux(vin):
            try:
                yield from packet.decode()
            except av.FFmpegError:
                continue


def keyframe_start(src: Any, vin: Any, a: float) -> tuple[float, float] | None:
    """(seek target, key frame time) in source seconds: the last key frame at or before ``a``,
    found on the packets (no decoding), and where to seek to demux it."""
    for back in BACKOFF:
        target = a - back if math.isfinite(back) else -math.inf
        seek(src, vin, target)
        best: float | None = None
        for packet in src.demux(vin):
            if packet.pts is None and packet.dts is None:
                continue
            t = secs(packet.pts if packet.pts is not None else packet.dts, packet.time_base)
            td = secs(packet.dts if packet.dts is not None else packet.pts, packet.time_base)
            assert t is not None and td is not None
            if packet.is_keyframe and t <= a + 1e-6:
                best = t if best is None else max(best, t)
            if td > a + 1e-6 and t > a + 1e-6 and (best is not None or packet.is_keyframe):
                break
        if best is not None:
            return target, best
    return None


def secs(pts: int | None, tb: Fraction | None) -> float | None:
    return None if pts is None or tb is None else float(pts * tb)
