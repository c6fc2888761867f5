"""Video input: any video file into model-ready clips, and whole-video encoding.

Modules: ``decode`` (opening, decoding, frame sampling: ``ClipReader``), ``clips`` (``read_clips``,
``read_clip``, ``clips_to_tensor``), ``dataset`` (``VideoClipDataset``), ``encode``
(``encode_video_file``, ``VideoEmbeddings`` and its ``.npz`` format), ``probe`` (header facts,
durations, single frames). Timing, padding and geometry: see ``milnce.video.decode``.
"""

from __future__ import annotations

from .clips import clips_to_tensor, read_clip, read_clips
from .dataset import VideoClipDataset
from .decode import (
    CROPS,
    PADS,
    Clip,
    ClipReader,
    VideoError,
    VideoIsADirectoryError,
    VideoNotFoundError,
    _ClipReader,
)
from .encode import EmbeddingsFileError, VideoEmbeddings, encode_video_file
from .probe import frame_at, probe_duration, probe_video

__all__ = [
    "VideoError",
    "VideoNotFoundError",
    "VideoIsADirectoryError",
    "EmbeddingsFileError",
    "Clip",
    "ClipReader",
    "VideoEmbeddings",
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
    "_ClipReader",
]
