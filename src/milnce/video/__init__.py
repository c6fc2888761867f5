"""Video input: any video file into model-ready clips, and whole-video encoding.

Modules: ``decode`` (opening, decoding, frame sampling: ``ClipReader``), ``clips`` (``read_clips``,
``read_clip``, ``clips_to_tensor``), ``dataset`` (``VideoClipDataset``), ``result`` (``VideoWindows``:
one video's windows and its one ``.npz`` format), ``pipeline`` (``run_jobs``: decode -> batch ->
model; ``scheduler``, ``decoders``, ``worker``, ``sources``: its parts and the decoder hook),
``encode`` (``encode_video_file``), ``probe`` (header facts, durations, single frames). Timing, padding and geometry: see ``milnce.video.decode``.
"""

from __future__ import annotations

import warnings
from typing import Any

from .clips import clips_to_tensor, read_clip, read_clips
from .cut import (
    CONTAINERS,
    ClipBusyError,
    ClipError,
    ClipLimits,
    SourceChangedError,
    check_span,
    clip_file_name,
    cut_clip,
)
from .dataset import VideoClipDataset
from .decode import (
    CROPS,
    PADS,
    Clip,
    ClipReader,
    VideoError,
    VideoIsADirectoryError,
    VideoNotFoundError,
    not_readable,
)
from .encode import EmbeddingsFileError, encode_video_file
from .find import VIDEO_EXTENSIONS, VIDEO_SUFFIXES, walk_videos
from .identity import NOFOLLOW, OPEN_FLAGS, identity_problem
from .npyfile import NpyFileError, npy_header, read_npy
from .pipeline import VideoJob, run_jobs
from .probe import frame_at, probe_duration, probe_video
from .result import FORMAT, VideoWindows, check_crc, check_structure, failure_reason, meta_problem, write_npz
from .sources import DecodeTask, WindowSource, WindowSourceFactory, default_source
from .subtitles import (
    SubtitleError,
    SubtitleTrack,
    find_sidecars,
    parse_langs,
    read_embedded,
    read_sidecar,
    sidecar_stamp,
)

__all__ = [
    "VideoError",
    "VideoNotFoundError",
    "VideoIsADirectoryError",
    "EmbeddingsFileError",
    "Clip",
    "ClipReader",
    "VideoWindows",
    "VideoJob",
    "run_jobs",
    "DecodeTask",
    "WindowSource",
    "WindowSourceFactory",
    "default_source",
    "read_clips",
    "read_clip",
    "clips_to_tensor",
    "VideoClipDataset",
    "encode_video_file",
    "probe_video",
    "probe_duration",
    "frame_at",
    "CROPS",
    "PADS",
    "CONTAINERS", "ClipBusyError", "ClipError", "ClipLimits", "SourceChangedError", "check_span", "clip_file_name",
    "cut_clip", "not_readable", "VIDEO_EXTENSIONS", "VIDEO_SUFFIXES", "walk_videos", "NOFOLLOW", "OPEN_FLAGS",
    "identity_problem", "NpyFileError", "npy_header", "read_npy", "FORMAT", "check_crc", "check_structure",
    "failure_reason", "meta_problem", "write_npz", "SubtitleError", "SubtitleTrack", "find_sidecars", "parse_langs",
    "read_embedded", "read_sidecar", "sidecar_stamp",
]


def __getattr__(name: str) -> Any:
    """``VideoEmbeddings``: the older name of ``VideoWindows`` (deprecated)."""
    if name == "VideoEmbeddings":
        warnings.warn("milnce.video.VideoEmbeddings is deprecated: use milnce.video.VideoWindows", DeprecationWarning,
                      stacklevel=2)
        return VideoWindows
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
