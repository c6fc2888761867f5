"""The text side of every index type: ``TextQueries``, the base of ``milnce.index.reader.IndexReader``
and of the Milvus collection (``milnce.index.milvus_query``). It turns sentences into query
embeddings with the index's model (``query_problem``, ``encode_queries``, ``negative_embeddings``,
``query_embedding``), chooses the search mode (``search_mode``: visual, speech or hybrid, from the
transcripts the index type keeps) and ranks through the subclass's ``search_embeddings``, which
reads that index type's own storage. The reads every index type makes alike from its snapshot
(an ``IndexView``) live here too: the video records (``videos``, ``video``, ``video_by_path``)
and the example window of a query by example (``like_embedding``).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, overload

import numpy as np

from ..errors import UsageError
from ..windows import WindowSettings
from .errors import IndexFolderError
from .filters import VideoFilter
from .hybrid import check_mode
from .layout import expand_path, user_path
from .negatives import DEFAULT_NOT_WEIGHT
from .ranking import query_matrix
from .records import Moment, VideoRecord, VideoRow
from .transcripts import Transcripts

if TYPE_CHECKING:  # pragma: no cover
    from ..protocols import Encoder

__all__ = ["IndexView", "TextQueries", "video_record"]

Windows = tuple[np.ndarray, np.ndarray, np.ndarray]  # starts, ends, embeddings of one video's windows


class IndexView(Protocol):
    """What the shared reads take from an index type's snapshot: its video rows by id and by path
    and its window settings."""

    @property
    def records(self) -> Mapping[int, VideoRow]: ...

    @property
    def by_path(self) -> Mapping[str, int]: ...

    @property
    def settings(self) -> Mapping[str, Any]: ...


S = TypeVar("S", bound=IndexView)


def video_record(r: VideoRow) -> VideoRecord:
    """The public record of a stored video row (``exists``: whether its file is there now)."""
    return VideoRecord(id=r.id, path=r.path, duration=float(r.duration), num_windows=int(r.num_windows),
                       size=int(r.size), mtime=float(r.mtime), exists=os.path.isfile(r.path))


def indexed_video(view: IndexView, video: int | str | os.PathLike[str]) -> int | None:
    """The id of ``video`` (an id: ``KeyError`` when unknown; a path: only when its file is indexed
    and unchanged since, so its stored windows are its windows), else None."""
    if isinstance(video, (int, np.integer)):
        if int(video) not in view.records:
            raise KeyError(f"no video with id {video!r} in the index")
        return int(video)
    known = view.by_path.get(user_path(video))
    if known is not None and os.path.isfile(view.records[known].path):
        rec = view.records[known]
        st = os.stat(rec.path)
        if st.st_size == rec.size and float(st.st_mtime) == rec.mtime:
            return rec.id
    return None


class TextQueries(Generic[S]):
    """Sentences -> query embeddings -> the subclass's ``search_embeddings`` (one base for the
    embedded reader and the Milvus collection, whose snapshots are ``S``)."""

    model: Encoder | None

    @property
    def dim(self) -> int:  # pragma: no cover - provided by the index type
        raise NotImplementedError

    @property
    def snapshot(self) -> S:  # pragma: no cover - provided by the index type
        raise NotImplementedError

    def snapshot_windows(self, snap: S, video_id: int) -> Windows:  # pragma: no cover - provided by the index type
        """``(starts, ends, embeddings)`` of one video's windows as read for ``snap``."""
        raise NotImplementedError

    # -- the video records ----------------------------------------------------------------------

    def videos(self) -> list[VideoRecord]:
        """All indexed videos, by path."""
        return sorted((video_record(r) for r in self.snapshot.records.values()), key=lambda v: v.path)

    def video(self, video_id: int) -> VideoRecord:
        """One video by id (``KeyError`` if unknown)."""
        try:
            return video_record(self.snapshot.records[int(video_id)])
        except (KeyError, ValueError, TypeError):
            raise KeyError(f"no video with id {video_id!r} in the index") from None

    def video_by_path(self, path: str | os.PathLike[str]) -> VideoRecord | None:
        """The video recorded at ``path`` (``~`` expanded, made absolute), or None."""
        snap = self.snapshot
        vid = snap.by_path.get(user_path(path))
        return None if vid is None else video_record(snap.records[vid])

    # -- queries --------------------------------------------------------------------------------

    def search_embeddings(self, text_emb: np.ndarray, k: int = 10, *, merge: bool = True, by_video: bool = False,
                          exact: bool | str = False, exclude_videos: Iterable[int] = (),
                          neg: np.ndarray | None = None, not_weight: float = DEFAULT_NOT_WEIGHT,
                          video_filter: VideoFilter | None = None, offset: int = 0,
                          speech_text: Sequence[str] | None = None, mode: str = "hybrid",
                          speech_weight: float | None = None) -> list[list[Moment]]:  # pragma: no cover
        raise NotImplementedError

    def like_embedding(self, video: int | str | os.PathLike[str], start: float = 0.0) -> tuple[np.ndarray, int | None]:
        """The embedding of the window of ``video`` (an id, or a path) that starts nearest ``start``
        seconds, and the video's id (None when the video is not in the index: its window at
        ``start`` is then embedded with the model, with the index's window settings)."""
        start = float(start)
        if not math.isfinite(start) or start < 0:
            raise UsageError(f"start must be a finite number of seconds >= 0, got {start!r}")
        snap = self.snapshot
        vid = indexed_video(snap, video)
        if vid is not None:
            starts, _, emb = self.snapshot_windows(snap, vid)
            return np.asarray(emb[int(np.argmin(np.abs(starts - start)))], np.float32), vid
        assert not isinstance(video, (int, np.integer))  # an unknown id raised KeyError
        return self.embed_window(video, start, snap.settings), None

    def embed_window(self, path: str | os.PathLike[str], start: float, settings: Mapping[str, Any]) -> np.ndarray:
        """The embedding of the window of the video file ``path`` at ``start`` seconds (the window
        ``settings`` of the index), with the model."""
        if self.model is None:
            raise IndexFolderError(f"{os.fspath(path)} is not in the index (or changed since): open the index with "
                                   "a model to embed it")
        w = WindowSettings.from_dict(dict(settings))
        ve = self.model.encode_video_file(expand_path(path), fps=w.fps, num_frames=w.num_frames, size=w.size,
                                          stride=w.stride, crop=w.crop, start=start, end=start + w.duration)
        if len(ve) == 0:
            raise UsageError(f"{os.fspath(path)}: no frames at {start:g} s")
        return np.asarray(ve.embeddings[0], np.float32)

    def transcript_store(self) -> Transcripts | None:
        """The index's transcript tables, or None (an index without them: visual search only)."""
        return None

    def transcript_counts(self) -> tuple[int, int]:
        """``(videos with transcripts, cues)`` (zeros without transcript tables)."""
        store = self.transcript_store()
        return store.stats() if store is not None else (0, 0)

    def has_transcripts(self) -> bool:
        return self.transcript_counts()[0] > 0

    def search_mode(self, mode: str | None) -> tuple[str, str]:
        """The mode a text search runs in and a one-line note: default hybrid where the index has
        transcripts, else visual. Without transcripts hybrid is visual (the same scores: no window
        has speech) and speech finds nothing; the note says so."""
        mode = check_mode(mode)
        have = self.has_transcripts()
        if mode is None:
            return ("hybrid", "hybrid: pictures and speech") if have else \
                ("visual", "visual only: the index has no transcripts")
        if not have and mode == "hybrid":
            return "visual", "visual only: the index has no transcripts"
        if not have and mode == "speech":
            return "speech", "speech: the index has no transcripts, so nothing can match"
        return mode, {"visual": "visual", "speech": "speech only", "hybrid": "hybrid: pictures and speech"}[mode]

    def query_problem(self, query: str) -> str | None:
        """Why a text query cannot be searched (empty, no known word), or None."""
        if not isinstance(query, str):
            return f"query must be a string, got {type(query).__name__}"
        if self.model is None:
            return "the query is empty" if not query.strip() else None
        return self.model.tokenizer.query_problem(query)

    def encode_queries(self, queries: Sequence[str]) -> tuple[np.ndarray, list[str | None]]:
        """Text embeddings (Q x 512; zero rows for unusable queries) and each query's problem."""
        if self.model is None:
            raise IndexFolderError("this index was opened without a model: pass one to Index.open(folder, model) "
                                   "to search with text, or use search_embeddings()")
        problems = [self.query_problem(q) for q in queries]
        emb = np.zeros((len(queries), self.dim), np.float32)
        good = [i for i, p in enumerate(problems) if p is None]
        if good:
            out = self.model.encode_text([queries[i] for i in good])
            emb[good] = out.detach().cpu().numpy().astype(np.float32)
        return emb, problems

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
        """Best moments for a query (a list of ``Moment``), or for each of several queries (a list
        of lists). A query that is empty or has no known word gives no results (and a warning);
        ``query_problem`` says why.

        Moments are defined per video and query, independently of ``k`` (``milnce.index.moments``);
        the results are the first ``k`` of one ranking of all moments of all videos (score, then
        video id, then start), so ``k=10`` gives the first 10 of ``k=40``, and ``offset=10, k=10``
        the next 10. ``merge=False``: single windows instead of moments; ``by_video``: each video's
        best moment, videos ranked by it; ``exact``: skip the ANN index; ``exclude_videos``: video
        ids to leave out; ``negatives``: sentences to score against (a window's score becomes
        ``pos - not_weight * max(neg)``, ``milnce.index.negatives``); ``video_filter``: only the
        videos it lets through (``milnce.index.filters``; ``NoVideoMatchesError`` when none);
        ``mode``: ``"visual"`` (default here), ``"speech"``, ``"hybrid"`` or None (hybrid where the
        index has transcripts: ``search_mode``), ``speech_weight``: ``milnce.index.hybrid``."""
        single = isinstance(query, str)
        queries: list[str] = [query] if isinstance(query, str) else list(query)
        if not queries:
            return []
        neg = self.negative_embeddings(negatives)
        emb, problems = self.encode_queries(queries)
        used = self.search_mode(mode)[0]
        if used != "visual":  # words the model does not know may still have been said (a zero visual query)
            problems = [p if p is None or not queries[i].strip() else None for i, p in enumerate(problems)]
        for p in problems:
            if p is not None:
                warnings.warn(f"{p}; no results", stacklevel=2)
        good = [i for i, p in enumerate(problems) if p is None]
        results: list[list[Moment]] = [[] for _ in queries]
        if good:
            found = self.search_embeddings(emb[good], k, merge=merge, by_video=by_video, exact=exact,
                                           exclude_videos=exclude_videos, neg=neg, not_weight=not_weight,
                                           video_filter=video_filter, offset=offset,
                                           speech_text=None if used == "visual" else [queries[i] for i in good],
                                           mode=used, speech_weight=speech_weight)
            for i, res in zip(good, found):
                results[i] = res
        return results[0] if single else results

    def negative_embeddings(self, negatives: Sequence[str]) -> np.ndarray | None:
        """Embeddings of negative terms (K x 512), or None for none; ``UsageError`` for a term
        that cannot be searched (empty, no known word)."""
        terms = [negatives] if isinstance(negatives, str) else list(negatives)
        if not terms:
            return None
        emb, problems = self.encode_queries(terms)
        for t, p in zip(terms, problems):
            if p is not None:
                raise UsageError(f"negative term {t!r}: {p}")
        return emb

    def query_embedding(self, query: str | np.ndarray) -> np.ndarray:
        """A query as a 512-d float32 vector: a sentence (needs the model; ``UsageError`` when it has
        no known word) or an embedding (passed through, checked)."""
        if isinstance(query, str):
            emb, problems = self.encode_queries([query])
            if problems[0] is not None:
                raise UsageError(problems[0])
            return emb[0]
        q = query_matrix(query, self.dim)
        if len(q) != 1:
            raise UsageError(f"expected one query embedding, got {len(q)}")
        return q[0]

    def search_like(self, video: int | str | os.PathLike[str], start: float = 0.0, k: int = 10, *,
                    merge: bool = True, by_video: bool = False, exact: bool | str = False,
                    include_self: bool = False, video_filter: VideoFilter | None = None,
                    offset: int = 0) -> list[Moment]:
        """Query by example: moments like the window of ``video`` (id or path) at ``start`` seconds
        (``like_embedding``), ranked as ``search`` ranks them. The example's own video is left out
        unless ``include_self``."""
        q, vid = self.like_embedding(video, start)
        skip = [] if include_self or vid is None else [vid]
        return self.search_embeddings(q, k, merge=merge, by_video=by_video, exact=exact, exclude_videos=skip,
                                      video_filter=video_filter, offset=offset)[0]
