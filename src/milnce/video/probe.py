"""Cheap facts about a video file without sampling clips: ``probe_video`` (header facts),
``probe_duration`` (the header duration, for progress bars) and ``frame_at`` (one decoded frame,
for thumbnails). Every reader of video files goes through ``milnce.video``."""

from __future__ import annotations

import os
from typing import Any

from .decode import Video, VideoError, check_path

__all__ = ["probe_video", "probe_duration", "frame_at"]


def probe_video(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Header facts about a video: ``width``, ``height`` (as stored), ``rotation`` (degrees),
    ``duration`` (seconds or None), ``fps`` (average, or None), ``codec``, ``pix_fmt``."""
    p = check_path(path)
    v = Video(p)
    try:
        s = v.stream
        rot = 0
        for frame in v.container.decode(s):
            rot = frame.rotation
            break
        return {
            "path": p,
            "width": v.width,
            "height": v.height,
            "rotation": rot,
            "duration": v.header_duration,
            "fps": (1.0 / v.period) if v.period else None,
            "codec": s.codec_context.name,
            "pix_fmt": s.codec_context.pix_fmt,
        }
    finally:
        v.close()


def probe_duration(path: str | os.PathLike[str]) -> float | None:
    """The duration the file's header states (seconds), or None if unknown or unreadable.

    Opens the container only (no decoding): meant for progress bars and estimates; an
    unreadable file is reported later by whatever reads it for real."""
    try:
        import av

        with av.open(os.fspath(path), metadata_errors="ignore") as c:
            if c.duration:
                return float(c.duration) / av.time_base
            for s in c.streams.video:
                if s.duration and s.time_base:
                    return float(s.duration * s.time_base)
    except Exception:  # noqa: BLE001 - unreadable files fail later, with the reason
        pass
    return None


def frame_at(path: str | os.PathLike[str], t: float, *, max_frames: int = 2000) -> Any:
    """The decoded frame (a PyAV ``VideoFrame``) shown at about ``t`` seconds: the first frame at or
    after ``t`` minus half a frame period (the last frame if ``t`` is past the end). Seeks to the key
    frame before ``t`` and decodes forward (at most ``max_frames`` frames). Raises ``VideoError``."""
    p = check_path(path)
    video = Video(p, threads=1)
    frames = video.frames(seek=t if t > 0 else None)
    try:
        half = 0.5 * (video.period or 0.04)
        chosen = None
        for n, (ft, frame) in enumerate(frames):
            chosen = frame
            if ft >= t - half or n > max_frames:
                break
    finally:
        frames.close()
        video.close()
    if chosen is None:
        raise VideoError(f"{p}: no frame could be decoded at {t:.2f} s")
    return chosen
