"""Feature extraction at scale: the decode -> batch -> model pipeline (``run_jobs``) and the
resumable, sharded ``milnce extract`` behind it."""

from .pipeline import JobResult, VideoJob, default_workers, run_jobs

__all__ = ["VideoJob", "JobResult", "run_jobs", "default_workers"]
