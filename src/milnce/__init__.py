"""milnce: the S3D text-video model trained on HowTo100M with MIL-NCE (Miech et al., CVPR 2020).

>>> import milnce
>>> model = milnce.load_model()                      # doctest: +SKIP
>>> t = model.encode_text(["cut tomato"])            # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from importlib import import_module
from typing import Any

from .api import MILNCE, VideoOutput, load_model
from .download import DownloadError
from .errors import MilnceError, UsageError
from .model import S3D
from .text import Tokenizer, VocabularyError, load_vocab
from .weights import REGISTRY, CheckpointError, WeightsInfo, load_checkpoint
from .windows import WindowSettings

__version__ = "0.1.0"

# Features whose modules pull in heavier dependencies load on first use.
_LAZY = {
    "read_clips": "milnce.video",
    "read_clip": "milnce.video",
    "clips_to_tensor": "milnce.video",
    "VideoClipDataset": "milnce.video",
    "encode_video_file": "milnce.video",
    "VideoError": "milnce.video",
    "VideoNotFoundError": "milnce.video",
    "ClipReader": "milnce.video",
    "Clip": "milnce.video",
    "Index": "milnce.index",
    "build_index": "milnce.index",
    "IndexFolderError": "milnce.index",
    "IndexNotFoundError": "milnce.index",
    "IndexLockedError": "milnce.index",
    "IndexMismatchError": "milnce.index",
    "IndexWriteError": "milnce.index",
}

__all__ = [
    "S3D",
    "MILNCE",
    "Tokenizer",
    "WeightsInfo",
    "REGISTRY",
    "load_model",
    "load_vocab",
    "load_checkpoint",
    "VideoOutput",
    "WindowSettings",
    "MilnceError",
    "UsageError",
    "CheckpointError",
    "VocabularyError",
    "DownloadError",
    *_LAZY,
]


# Older names, kept because the documented Python API named them (each warns once per use).
_DEPRECATED = {"VideoEmbeddings": ("milnce.video.result", "VideoWindows")}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    if name in _DEPRECATED:
        module, new = _DEPRECATED[name]
        warnings.warn(f"milnce.{name} is deprecated: use {module.rpartition('.')[0]}.{new}", DeprecationWarning,
                      stacklevel=2)
        return getattr(import_module(module), new)
    raise AttributeError(f"module 'milnce' has no attribute {name!r}")
