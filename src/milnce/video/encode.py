"""Whole-video encoding: ``encode_video_file``, one video through the pipeline (``run_jobs`` with
a decoding thread); its result is a ``VideoWindows`` (``milnce.video.result``, the ``.npz`` format)."""

from __future__ import annotations

import logging
import os

from ..protocols import VideoEncoder
from ..runoptions import resolve_batch_size
from ..windows import WindowSettings
from .decode import VideoError
from .pipeline import VideoJob, run_jobs
from .result import EmbeddingsFileError, VideoWindows

__all__ = ["EmbeddingsFileError", "encode_video_file"]

log = logging.getLogger("milnce.video")


def encode_video_file(model: VideoEncoder, path: str | os.PathLike[str], *, fps: float | None = None,
                      num_frames: int | None = None, size: int | None = None, stride: int | None = None,
                      start: float | None = None, end: float | None = None, batch_size: int | None = None,
                      features: bool = False, progress: bool = False, crop: str = "center",
                      pad: str = "repeat", threads: int = 0, allow_gaps: bool = False) -> VideoWindows:
    """Embed every window of a video: ``read_clips`` windows -> ``model.encode_video``.

    ``fps``/``num_frames``/``size``/``stride`` default to the model's input conventions
    (``WindowSettings.for_model(model)``; the published weights: 10 fps, 32 frames, 224 px, a
    window every 16 frames: half the window); a stride longer than the window is refused unless
    ``allow_gaps``. A background thread decodes while the model runs (the pipeline of
    ``run_jobs`` with ``workers=0``). Returns a ``VideoWindows`` with
    per-window ``starts``/``ends`` (seconds), ``embeddings`` (N x D) and, with ``features=True``,
    the ``mixed_5c`` features; ``stats`` holds the share of time spent waiting for frames.
    Raises ``VideoError`` for an unreadable video; corrupt or truncated data that was skipped is
    logged (``milnce.video`` logger) and kept in ``warnings``.
    """
    w = WindowSettings.for_model(model, fps=fps, num_frames=num_frames, size=size, stride=stride, crop=crop,
                                 allow_gaps=allow_gaps)
    whole = isinstance(batch_size, float) and float(batch_size).is_integer()
    batch = resolve_batch_size(int(batch_size) if whole and batch_size is not None else batch_size, model.device)
    p = os.fspath(path)
    stats: dict[str, float] = {}
    label = os.path.basename(p) if progress else False
    results = run_jobs(model, [VideoJob(p, start=start, end=end)], w, pad=pad, features=features, batch_size=batch,
                       workers=0, decode_threads=threads, stats=stats, progress=label)
    try:
        (res,) = list(results)
    finally:
        results.close()
    for m in res.warnings:
        log.warning(m)
    if res.error is not None:
        if res.exception is not None:
            raise res.exception
        raise VideoError(res.error)
    wall = stats.get("wall_s", 0.0)
    stats["wait_share"] = min(1.0, stats.get("wait_s", 0.0) / wall) if wall > 0 else 0.0
    res.stats = stats
    res.key = None
    return res
