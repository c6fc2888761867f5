"""Feature extraction at scale.

* ``run_jobs``: the decode -> batch -> model pipeline (decoding processes, cross-video batches,
  pinned non-blocking copies on CUDA) for any list of videos or explicit windows.
* ``extract`` / ``check``: the resumable, sharded extraction behind ``milnce extract`` into a
  mirrored tree of ``.npz`` feature files; ``iter_feature_files`` / ``read_feature_file`` read
  them back (no pickle).
"""

import warnings
from typing import Any

from ..runoptions import RunOptions, default_workers, resolve_run_options
from ..video import VideoJob, VideoWindows, run_jobs
from .inputs import Shard, VideoInput, collect_inputs, output_path, resolve_shard, shard_inputs
from .pack import pack_univl, pack_videoclip, read_id_list
from .ranks import finish_together
from .recipe_store import RecipeLayout, check_unique_ids
from .runner import (
    FEATURES,
    CheckReport,
    ExtractReport,
    check,
    check_features,
    extract,
    failures_file,
    read_failures,
    show,
)
from .store import StoreError, feature_file_paths, inspect_meta, iter_feature_files, read_feature_file, read_meta

__all__ = [
    "VideoJob", "run_jobs", "default_workers", "RunOptions", "resolve_run_options",
    "extract", "check", "ExtractReport", "CheckReport", "FEATURES", "failures_file", "read_failures",
    "StoreError", "iter_feature_files", "read_feature_file", "feature_file_paths", "read_meta",
    "VideoInput", "Shard", "collect_inputs", "shard_inputs", "resolve_shard", "output_path",
    "pack_univl", "pack_videoclip", "read_id_list", "finish_together", "RecipeLayout", "check_unique_ids",
    "check_features", "show", "inspect_meta",
]


def __getattr__(name: str) -> Any:
    """``JobResult`` and ``FeatureFile``: older names of ``milnce.video.VideoWindows`` (deprecated)."""
    if name in ("JobResult", "FeatureFile"):
        warnings.warn(f"milnce.extract.{name} is deprecated: use milnce.video.VideoWindows", DeprecationWarning,
                      stacklevel=2)
        return VideoWindows
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
