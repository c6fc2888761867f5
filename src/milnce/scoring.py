"""Text embeddings as a file (``milnce embed-text``) and sentences scored against saved video
embeddings (``milnce similarity``): ``embed_texts``, ``save_embeddings``, ``load_windows``,
``score_texts``."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .atomic import atomic_file
from .errors import UsageError

__all__ = ["TEXT_EMBEDDINGS_FILE", "Windows", "embed_texts", "save_embeddings", "load_windows", "score_texts"]

logger = logging.getLogger("milnce.scoring")

TEXT_EMBEDDINGS_FILE = "text_embeddings.npy"  # the file written into a folder given as the output


@dataclass(frozen=True)
class Windows:
    """Saved video windows, in file order: their embeddings (N x D) and a label each
    (``name[start-end s]``, or ``name[i]`` for a plain ``.npy`` without times)."""

    embeddings: np.ndarray
    labels: list[str]


def embed_texts(model: Any, texts: Sequence[str]) -> np.ndarray:
    """The sentences' embeddings as float32 (T x 512); one warning when a text is empty (it gets
    the all-padding embedding)."""
    if any(not t.strip() for t in texts):
        logger.warning("warning: empty text gets the all-padding embedding")
    return model.encode_text(list(texts)).cpu().numpy().astype(np.float32)  # type: ignore[no-any-return]


def save_embeddings(out: str, array: np.ndarray) -> str:
    """Write ``array`` atomically to ``out`` (``out/text_embeddings.npy`` for a folder; ``.npy``
    appended when missing, as numpy does) and return the path written."""
    path = os.path.join(out, TEXT_EMBEDDINGS_FILE) if os.path.isdir(out) else out
    if not path.endswith(".npy"):
        path += ".npy"
    with atomic_file(path) as f:
        np.save(f, array, allow_pickle=False)
    return path


def load_windows(paths: Sequence[str]) -> Windows:
    """The windows of saved video embeddings (``.npz`` from ``extract``/``embed-video``, or a plain
    N x D ``.npy``), concatenated; ``EmbeddingsFileError`` for a file that holds none."""
    from .video import EmbeddingsFileError, VideoWindows

    vids, labels = [], []
    for path in paths:
        ve = VideoWindows.load(path)
        if len(ve) == 0:
            raise EmbeddingsFileError(f"{path}: holds no windows (nothing to score)")
        name = os.path.basename(path)
        if np.isfinite(ve.starts).all():
            labels += [f"{name}[{s:.1f}-{e:.1f}s]" for s, e in zip(ve.starts, ve.ends)]
        else:  # a plain .npy: no window times
            labels += [f"{name}[{i}]" for i in range(len(ve))]
        vids.append(ve.embeddings)
    return Windows(np.concatenate(vids), labels)


def score_texts(model: Any, texts: Sequence[str], windows: Windows) -> np.ndarray:
    """Dot-product scores of each sentence against each window (T x N); ``UsageError`` when the
    embeddings' dimensions differ."""
    text = model.encode_text(list(texts)).cpu().numpy()
    video = windows.embeddings
    if video.shape[1] != text.shape[1]:
        raise UsageError(f"video embeddings have {video.shape[1]} dims but text embeddings {text.shape[1]}")
    return text @ video.T  # type: ignore[no-any-return]
