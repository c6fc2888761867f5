"""The model seam: what video, index, localize and server code need from a model.

``milnce.MILNCE`` satisfies these; so does any stand-in with the same members (tests, remote
models). Code below the API layer types its ``model`` parameters with them instead of importing
``milnce.api`` (which would make the layers import each other).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch

if TYPE_CHECKING:  # pragma: no cover
    from .text import Tokenizer
    from .weights import WeightsInfo

__all__ = ["VideoEncoder", "TextEncoder", "Encoder"]


@runtime_checkable
class VideoEncoder(Protocol):
    """Embeds clips: ``encode_video(B x 3 x T x H x W)`` -> ``B x 512`` (or ``(embedding, features)``)."""

    @property
    def info(self) -> WeightsInfo: ...

    @property
    def device(self) -> torch.device: ...

    @property
    def weights_id(self) -> str: ...

    def encode_video(self, video: torch.Tensor, features: bool = False, batch_size: int = 8) -> Any: ...


@runtime_checkable
class TextEncoder(Protocol):
    """Embeds sentences: ``encode_text(texts)`` -> ``B x 512``; ``tokenizer`` says which words it knows."""

    @property
    def tokenizer(self) -> Tokenizer: ...

    @property
    def weights_id(self) -> str: ...

    def encode_text(self, texts: Sequence[str] | str) -> torch.Tensor: ...


@runtime_checkable
class Encoder(VideoEncoder, TextEncoder, Protocol):
    """Both towers (``milnce.MILNCE``): what the index, localisation and the server need."""

    def encode_video_file(self, path: Any, **kwargs: Any) -> Any: ...
