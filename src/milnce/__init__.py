"""milnce: the S3D text-video model trained on HowTo100M with MIL-NCE (Miech et al., CVPR 2020).

>>> import milnce
>>> model = milnce.load_model()                      # doctest: +SKIP
>>> t = model.encode_text(["cut tomato"])            # doctest: +SKIP
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from .api import MILNCE, load_model
from .model import S3D
from .text import Tokenizer, load_vocab
from .weights import REGISTRY, WeightsInfo, load_checkpoint

__version__ = "0.1.0"

# Features whose modules pull in heavier dependencies load on first use.
_LAZY = {
    "read_clips": "milnce.video",
    "read_clip": "milnce.video",
    "clips_to_tensor": "milnce.video",
    "VideoClipDataset": "milnce.video",
    "encode_video_file": "milnce.video",
    "VideoError": "milnce.video",
    "Clip": "milnce.video",
    "VideoEmbeddings": "milnce.video",
    "Index": "milnce.index",
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
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'milnce' has no attribute {name!r}")
