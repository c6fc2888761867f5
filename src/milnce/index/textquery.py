"""The text side of every index type: ``TextQueries``, the base of ``milnce.index.reader.IndexReader``
and of the Milvus collection (``milnce.index.milvus_query``). It turns sentences into query
embeddings with the index's model (``query_problem``, ``encode_queries``, ``negative_embeddings``,
``query_embedding``), chooses the search mode (``search_mode``: visual, speech or hybrid, from the
transcripts the index type keeps) and ranks through the subclass's ``search_embeddings`` and
``like_embedding``, which read that index type's own storage.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, overload

import numpy as np

from ..errors import UsageError
from .errors import IndexFolderError
from .filters import VideoFilter
from .hybrid import check_mode
from .negatives import DEFAULT_NOT_WEIGHT
from .ranking import query_matrix
from .records import Moment
from .transcripts import Transcripts

if TYPE_CHECKING:  # pragma: no cover
    from ..protocols import Encoder

__all__ = ["TextQueries"]


class TextQueries:
    """Sentences -> query embeddings -> the subclass's ``search_embeddings`` (one base for the
    embedded reader and the Milvus collection)."""

    model: Encoder | None

    @property
    def dim(self) -> int:  # pragma: no cover - provided by the index type
        raise NotImplementedError

    def search_embeddings(self, text_emb: np.ndarray, k: int = 10, *, merge: bool = True, by_video: bool = False,
                          exact: bool | str = False, exclude_videos: Iterable[int] = (),
                          neg: np.ndarray | None = None, not_weight: float = DEFAULT_NOT_WEIGHT,
                          video_filter: VideoFilter | None = None, offset: int = 0,
                          speech_text: Sequence[str] | None = None, mode: str = "hybrid",
                          speech_weight: float | None = None) -> list[list[Moment]]:  # pragma: no cover
        raise NotImplementedError

    def like_embedding(self, video: int | str | os.PathLike[str],
                       start: float = 0.0) -> tuple[np.ndarray, int | None]:  # pragma: no cover
        raise NotImplementedError

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
