"""The read surface of an index: ``SearchableIndex``, what the server (``milnce.server``), the
search commands (``search``, ``serve``, ``clip``, ``localize``, ``demo``) and ``milnce.localize``
use of an opened index, and nothing more. ``milnce.index.reader.IndexReader`` (and the writer
``Index``, which is one) implements it; another backend (a vector database) that implements it
can be served and searched the same way.

Ids, ``VideoRow`` / ``VideoRecord`` / ``Moment`` values and scores mean what they mean for
``IndexReader``: a video id is stable while the video is indexed, ``search`` ranks moments by the
fixed ranking of ``milnce.index.reader.IndexReader.search`` and scores are dot products of
normalised embeddings.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol, TypeVar, overload, runtime_checkable

import numpy as np

from .filters import VideoFilter
from .negatives import DEFAULT_NOT_WEIGHT
from .records import Moment, VideoRecord, VideoRow

__all__ = ["SearchableIndex"]

S = TypeVar("S", bound="SearchableIndex")


@runtime_checkable
class SearchableIndex(Protocol):
    """An opened index, read-only: its facts, its videos and every search the commands and the
    server make. Searches are thread-safe; ``refresh`` picks up another writer's commits."""

    # -- facts --------------------------------------------------------------------------------

    @property
    def directory(self) -> str:
        """Where the index lives (a folder; a backend's name for a remote one)."""

    @property
    def meta(self) -> Mapping[str, Any]:
        """The recorded facts (``weights_id``, ``settings``, ``ann``, ...)."""

    @property
    def dim(self) -> int:
        """The embedding size (512 for the published model)."""

    @property
    def weights_id(self) -> str:
        """The fingerprint of the weights whose embeddings the index holds."""

    @property
    def settings(self) -> dict[str, Any]:
        """The window settings (``milnce.windows.WindowSettings.to_dict``)."""

    @property
    def num_videos(self) -> int:
        """Number of indexed videos."""

    def __len__(self) -> int:
        """Number of (live) windows."""

    def check_settings(self, settings: dict[str, Any]) -> None:
        """Refuse window settings that differ from the index's (``IndexMismatchError``)."""

    def refresh(self) -> bool:
        """Pick up commits made since opening; returns whether there were any."""

    def check_files(self) -> None:
        """Refuse (``IndexDamagedError``) a store that can no longer be searched."""

    def serving_roots(self) -> tuple[list[str], str | None]:
        """The roots the indexed videos may be served from, and a note when they were guessed."""

    # -- videos -------------------------------------------------------------------------------

    def rows(self) -> list[VideoRow]:
        """Every stored video row."""

    def row(self, video_id: int) -> VideoRow:
        """The stored row of a video (``KeyError`` if unknown)."""

    def videos(self) -> list[VideoRecord]:
        """All indexed videos, by path."""

    def video(self, video_id: int) -> VideoRecord:
        """One video by id (``KeyError`` if unknown)."""

    def video_by_path(self, path: str | os.PathLike[str]) -> VideoRecord | None:
        """The video recorded at ``path``, or None."""

    def windows(self, video_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(starts, ends, embeddings)`` of one video's windows (copies)."""

    # -- the approximate index ----------------------------------------------------------------

    def ann(self) -> Any:
        """The loaded approximate index, or None when searches are exact."""

    def ann_status(self) -> dict[str, Any]:
        """The approximate index's state: ``{"state": "ok" | "not built" | "missing" | "damaged" |
        "stale" | "no faiss", ...}``; anything but "ok" means searches are exact."""

    # -- searches -----------------------------------------------------------------------------

    def query_problem(self, query: str) -> str | None:
        """Why a text query cannot be searched (empty, no known word), or None."""

    @overload
    def search(self, query: str, k: int = 10, *, merge: bool = True, by_video: bool = False,  # type: ignore[overload-overlap]
               exact: bool | str = False, exclude_videos: Iterable[int] = (), negatives: Sequence[str] = (),
               not_weight: float = DEFAULT_NOT_WEIGHT, video_filter: VideoFilter | None = None,
               offset: int = 0, mode: str | None = "visual", speech_weight: float | None = None) -> list[Moment]: ...

    @overload
    def search(self, query: Sequence[str], k: int = 10, *, merge: bool = True, by_video: bool = False,
               exact: bool | str = False, exclude_videos: Iterable[int] = (), negatives: Sequence[str] = (),
               not_weight: float = DEFAULT_NOT_WEIGHT, video_filter: VideoFilter | None = None,
               offset: int = 0, mode: str | None = "visual", speech_weight: float | None = None) -> list[list[Moment]]: ...

    def search(self, query: str | Sequence[str], k: int = 10, *, merge: bool = True, by_video: bool = False,
               exact: bool | str = False, exclude_videos: Iterable[int] = (), negatives: Sequence[str] = (),
               not_weight: float = DEFAULT_NOT_WEIGHT, video_filter: VideoFilter | None = None,
               offset: int = 0, mode: str | None = "visual",
               speech_weight: float | None = None) -> list[Moment] | list[list[Moment]]:
        """Best moments for a sentence (a list), or for each of several (a list of lists); ``mode``:
        visual, speech or hybrid (None: ``search_mode``'s default)."""

    def search_embeddings(self, text_emb: np.ndarray, k: int = 10, *, merge: bool = True, by_video: bool = False,
                          exact: bool | str = False, exclude_videos: Iterable[int] = (),
                          neg: np.ndarray | None = None, not_weight: float = DEFAULT_NOT_WEIGHT,
                          video_filter: VideoFilter | None = None, offset: int = 0,
                          speech_text: Sequence[str] | None = None, mode: str = "hybrid",
                          speech_weight: float | None = None) -> list[list[Moment]]:
        """``search`` for query embeddings (Q x 512 or 512; ``neg``: K x 512 negative ones;
        ``speech_text``: each query's sentence for the speech side of ``mode``)."""

    def search_mode(self, mode: str | None) -> tuple[str, str]:
        """The mode a text search runs in (visual, speech, hybrid) and a one-line note."""

    def has_transcripts(self) -> bool:
        """Whether any video has subtitle cues (``milnce.index.transcripts``)."""

    def search_like(self, video: int | str | os.PathLike[str], start: float = 0.0, k: int = 10, *,
                    merge: bool = True, by_video: bool = False, exact: bool | str = False,
                    include_self: bool = False, video_filter: VideoFilter | None = None,
                    offset: int = 0) -> list[Moment]:
        """Query by example: moments like the window of ``video`` (an id or a path) at ``start``."""

    # -- lifetime -----------------------------------------------------------------------------

    def close(self) -> None:
        """Release what the index holds open."""

    def __enter__(self: S) -> S: ...

    def __exit__(self, *exc: Any) -> None: ...
