"""The decode -> batch -> model pipeline, under its older home (``milnce.video.pipeline`` holds it).

``JobResult`` is ``milnce.video.VideoWindows`` (its attribute names ``video_embedding`` and
``mixed_5c`` are aliases of ``embeddings`` and ``features``)."""

from __future__ import annotations

from ..video.pipeline import VideoJob, default_workers, resolve_batch_size, resolve_workers, run_jobs
from ..video.result import VideoWindows

JobResult = VideoWindows

__all__ = ["VideoJob", "JobResult", "run_jobs", "default_workers", "resolve_batch_size", "resolve_workers"]
