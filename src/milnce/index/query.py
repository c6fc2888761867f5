"""The query side of an index: ``QueryMixin`` gives ``Index`` its searches (``search``,
``search_embeddings``, ``search_like``), per-video scores (``curve``, ``video_moments``, ``scores``),
query encoding (``encode_queries``, ``query_embedding``, ``like_embedding``, ``query_problem``)
and the ranking of moments with their cosine and percentile.

Ranking: candidates come from ``milnce.index.search.Searcher`` best first; each candidate video's
whole score curve is computed and its moments (``milnce.index.moments``) are grown exactly, so
results are the first ``k`` of one fixed ranking, whatever ``k``. Everything here reads one
``milnce.index.snapshot.Snapshot`` (records, row ranges, memory maps) through its public members;
``QueryMixin`` takes ``Index.snapshot`` once per call.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, overload

import numpy as np

from ..errors import UsageError
from ..windows import WindowSettings
from .errors import IndexFolderError
from .filters import VideoFilter, require_matches
from .hybrid import HybridSearcher, SpeechPlan, check_mode, check_speech_weight, fuse, plan_speech, speech_scale
from .layout import expand_path, user_path
from .moments import iter_video_moments
from .negatives import DEFAULT_NOT_WEIGHT
from .records import Moment
from .search import Searcher, window_scores
from .snapshot import Snapshot
from .transcripts import Transcripts

if TYPE_CHECKING:  # pragma: no cover
    from ..protocols import Encoder

__all__ = ["QueryMixin", "PERCENTILE_SAMPLE", "cosine", "rank", "moments_of", "video_scores",
           "allowed_rows", "search_snapshot"]


PERCENTILE_SAMPLE = 8192  # windows a moment's percentile is measured against (all, in smaller indexes)


def cosine(scores: np.ndarray | float, q: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """The one normalised score: ``scores`` (dot products of the query ``q`` with ``vectors``,
    one row each) divided by both norms (0 where a norm is 0). Used by search results and curves
    alike (the web API and the CLI)."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    qn = float(np.linalg.norm(np.asarray(q, dtype=np.float64)))
    vn = np.linalg.norm(np.asarray(vectors, dtype=np.float64).reshape(len(s), -1), axis=1)
    den = qn * vn
    return np.where(den > 0, s / np.where(den > 0, den, 1.0), 0.0)


class _Cursor:
    """One video's moments for one query, produced lazily best first (absolute store rows)."""

    def __init__(self, snap: Snapshot, pos: int, q: np.ndarray, merge: bool, neg: np.ndarray | None = None,
                 weight: float = DEFAULT_NOT_WEIGHT, plan: SpeechPlan | None = None) -> None:
        rs, _, vid = snap.ranges()
        self.vid = int(vid[pos])
        self.row0 = int(rs[pos])
        scores = video_scores(snap, pos, q, neg, weight)
        if plan is not None:  # the fused curve (milnce.index.hybrid)
            scores = plan.curve(self.row0, scores)
        self._it = iter_video_moments(scores, None if merge else -np.inf)
        self._next = next(self._it, None)
        if not merge and self._next is not None:  # single windows: the peak alone
            a, b, p, s = self._next
            self._next = (p, p, p, s)

    def head(self) -> tuple[float, int, int, int, int] | None:
        """The video's best moment ``(score, video id, first, last, peak)``, if any is left."""
        if self._next is None:
            return None
        a, b, p, s = self._next
        return (s, self.vid, self.row0 + a, self.row0 + b, self.row0 + p)

    def take_above(self, threshold: float) -> list[tuple[float, int, int, int, int]]:
        """Remove and return the video's next moments scoring above ``threshold``."""
        out = []
        while self._next is not None and self._next[3] > threshold:
            out.append(self.head())
            self._next = next(self._it, None)
        return out  # type: ignore[return-value]


def video_scores(snap: Snapshot, pos: int, q: np.ndarray, neg: np.ndarray | None = None,
                 weight: float = DEFAULT_NOT_WEIGHT) -> np.ndarray:
    """Scores of every window of the video at ``ranges()`` position ``pos`` (one fixed computation,
    so a moment's score never depends on how it was found); with negative queries ``neg`` the
    combined score ``q.x - weight * max_i neg_i.x`` (``milnce.index.negatives``)."""
    rs, re_, _ = snap.ranges()
    a, b = int(rs[pos]), int(re_[pos])
    return window_scores(snap.vectors[a:b], q, neg, weight)


def _score_tolerance(snap: Snapshot, q: np.ndarray) -> float:
    """A bound on the float32 rounding difference between two computations of one window's score."""

    def max_norm() -> float | None:
        codes = snap.codes()
        return float(np.asarray(codes[1][:, 2]).max()) if codes is not None and len(codes[1]) else None

    mx = snap.memo("max_norm", max_norm)
    qn = float(np.linalg.norm(q))
    return 1e-5 * qn * (mx if mx is not None and np.isfinite(mx) else max(qn, 1.0) * 1e3) + 1e-6


def allowed_rows(snap: Snapshot, video_filter: VideoFilter | None) -> tuple[np.ndarray | None, int]:
    """The rows a filter lets through (a boolean mask; None: every live row) and how many videos
    pass. ``NoVideoMatchesError`` when none do; ``FilterError`` for an invalid filter."""
    if video_filter is None or video_filter.is_empty:
        return None, len(snap.records)
    videos = require_matches(list(snap.records.values()), video_filter)
    mask = np.zeros(snap.num_rows, dtype=bool)
    for r in videos:
        mask[int(r.row_start):int(r.row_start) + int(r.num_windows)] = True
    return mask, len(videos)


def search_snapshot(snap: Snapshot, q: np.ndarray, k: int, *, merge: bool = True, by_video: bool = False,
                    exact: bool | str = False, exclude_videos: Iterable[int] = (), neg: np.ndarray | None = None,
                    not_weight: float = DEFAULT_NOT_WEIGHT, video_filter: VideoFilter | None = None,
                    offset: int = 0, speech: Sequence[SpeechPlan | None] | None = None) -> list[list[Moment]]:
    """Moments ``offset .. offset + k - 1`` of the ranking for each query embedding (rows of ``q``,
    checked) in one snapshot; ``neg``: negative query embeddings (K x d) for every query;
    ``video_filter``: only the videos it lets through; ``speech``: each query's speech side
    (``milnce.index.hybrid``; None: visual)."""
    if offset < 0:
        raise UsageError(f"offset must be >= 0, got {offset}")
    allowed, n_videos = allowed_rows(snap, video_filter)
    if snap.num_live == 0:
        return [[] for _ in range(len(q))]
    _, _, vid = snap.ranges()
    skip = {int(p) for p in np.flatnonzero(np.isin(vid, np.fromiter(
        (int(v) for v in exclude_videos), dtype=np.int64)))}
    searcher = Searcher(snap, q, exact=exact, neg=neg, weight=not_weight, allowed=allowed)
    out: list[list[Moment]] = []
    for i in range(len(q)):
        plan = speech[i] if speech is not None else None
        if plan is None:
            total = min(offset + k, n_videos if by_video else searcher.n_allowed)
            found = rank(snap, searcher, i, total, merge, by_video, skip)[offset:] if total > offset else []
        else:
            hs = HybridSearcher(searcher, i, plan)
            total = min(offset + k, n_videos if by_video else hs.n_allowed)
            found = rank(snap, hs, 0, total, merge, by_video, skip, plan)[offset:] if total > offset else []
            if plan.mode == "speech":
                found = [f for f in found if f[0] > 0]  # speech only: moments with a matching cue
        out.append(moments_of(snap, found, q[i], searcher.neg, searcher.weight, plan))
    return out


def rank(snap: Snapshot, searcher: Searcher | HybridSearcher, i: int, k: int, merge: bool, by_video: bool,
         skip: set[int], plan: SpeechPlan | None = None) -> list[tuple[float, int, int, int, int]]:
    """The first ``k`` of the fixed ranking of moments (or windows / videos) for query ``i``, as
    ``(score, video id, first row, last row, peak row)`` (``moments_of`` makes ``Moment``s).

    Candidates come from the searcher best first; for every video among them its whole score
    curve is computed and its moments grown exactly. With ``t`` the lowest candidate score,
    every moment scoring above ``t`` has its peak among the candidates, so the moments found
    above ``t`` are exactly the top of the ranking; when fewer than ``k``, the candidates widen."""
    q = searcher.q[i]
    n_live = searcher.n_allowed
    vid = snap.ranges()[2]
    m = min(n_live, max(2 * k, k + 8) if not by_video else max(4 * k, 32))
    tol = _score_tolerance(snap, q)
    if searcher.neg is not None:
        tol += searcher.weight * max(_score_tolerance(snap, n) for n in searcher.neg)
    cursors: dict[int, _Cursor] = {}
    found: list[tuple[float, int, int, int, int]] = []  # score, video id, first, last, peak (rows)
    while True:
        rows, scores = searcher.top(i, m)
        complete = m >= n_live or len(rows) < m
        thr = -np.inf if complete else float(scores[-1]) + tol
        if not merge and not by_video:
            pos = snap.positions(rows)
            keep = [j for j in range(len(rows)) if int(pos[j]) not in skip]
            found = [(float(scores[j]), int(vid[pos[j]]), int(rows[j]), int(rows[j]), int(rows[j])) for j in keep]
            if len(found) >= k or complete:
                return found[:k]
        else:
            for p in np.unique(snap.positions(rows)).tolist():
                if p not in skip and p not in cursors:
                    cursors[p] = _Cursor(snap, p, q, merge, searcher.neg, searcher.weight, plan)
            if by_video:
                found = [h for c in cursors.values() if (h := c.head()) is not None and h[0] > thr]
            else:
                for c in cursors.values():
                    found.extend(c.take_above(thr))
            if len(found) >= k or complete:
                break
        m = min(n_live, 2 * m)
    found.sort(key=lambda t: (-t[0], t[1], t[2]))
    return found[:k]


def moments_of(snap: Snapshot, found: list[tuple[float, int, int, int, int]], q: np.ndarray,
               neg: np.ndarray | None = None, weight: float = DEFAULT_NOT_WEIGHT,
               plan: SpeechPlan | None = None) -> list[Moment]:
    """``Moment``s (with cosine and percentile) for ``(score, video id, first, last, peak)`` rows.
    With negative queries the score is the combined one; ``cosine`` stays the positive query's
    and the percentile is measured against the sample's combined scores."""
    if not found:
        return []
    exists: dict[int, bool] = {}
    peaks = np.array([f[4] for f in found], dtype=np.int64)
    peak_vecs = np.asarray(snap.vectors[peaks], dtype=np.float64)
    pos = np.array([f[0] for f in found]) if neg is None and plan is None else peak_vecs @ np.asarray(q, np.float64)
    cos = cosine(pos, q, peak_vecs).tolist()
    sample = window_scores(_percentile_sample(snap), q, neg, weight)
    if plan is not None:
        peak_visual = window_scores(peak_vecs, q, neg, weight)
        peak_speech = plan.speech_of(peaks)
        sample = fuse(sample, plan.speech_of(percentile_rows(snap)), plan.scale, plan.mode)
    sample = np.sort(sample)
    times = snap.times
    out = []
    for j, ((score, vid, first, last, peak), c) in enumerate(zip(found, cos)):
        path = snap.records[vid].path
        if vid not in exists:
            exists[vid] = os.path.isfile(path)
        below = np.searchsorted(sample, score, side="left")
        ties = np.searchsorted(sample, score, side="right") - below
        pct = 100.0 * (below + 0.5 * ties) / len(sample) if len(sample) else float("nan")
        m = Moment(video_id=vid, path=path, start=float(times[first, 0]), end=float(times[last, 1]),
                   score=float(score), exists=exists[vid], peak=float(times[peak, 0]), cosine=float(c),
                   percentile=round(float(pct), 3))
        if plan is not None:
            m.visual_score = float(peak_visual[j])
            m.speech_score = round(float(peak_speech[j]), 6)
            m.cues = [cm.to_dict() for cm in plan.cues_between(vid, m.start, m.end)]
        out.append(m)
    return out



def _percentile_sample(snap: Snapshot) -> np.ndarray:
    """The windows percentiles are measured against: every live window up to ``PERCENTILE_SAMPLE``,
    else that many spread evenly over the live rows (fixed: the same for every query)."""

    def compute() -> np.ndarray:
        rows = percentile_rows(snap)
        # float64 once per snapshot: ``window_scores`` sums in float64, so each query's scoring of
        # the sample does not convert it again (6 ms -> 0.7 ms per query at 8,192 windows)
        return np.ascontiguousarray(snap.vectors[rows], dtype=np.float64)

    return snap.memo("pct", compute)


def percentile_rows(snap: Snapshot) -> np.ndarray:
    """The rows of the percentile sample (``_percentile_sample``), fixed per snapshot."""

    def compute() -> np.ndarray:
        n = snap.num_live
        pick = np.arange(n) if n <= PERCENTILE_SAMPLE else np.linspace(0, n - 1, PERCENTILE_SAMPLE).astype(np.int64)
        mask = snap.live_mask()
        return np.flatnonzero(mask)[pick] if mask is not None else pick

    return snap.memo("pct_rows", compute)


def query_matrix(emb: np.ndarray, dim: int) -> np.ndarray:
    """Query embeddings as a contiguous Q x dim float32 matrix (``UsageError`` if malformed or not finite)."""
    q = np.asarray(emb, dtype=np.float32)
    if q.ndim == 1:
        q = q[None]
    if q.ndim != 2 or q.shape[1] != dim:
        raise UsageError(f"query embeddings must be Q x {dim}, got shape {q.shape}")
    if not np.isfinite(q).all():
        raise UsageError("query embeddings must be finite")
    return np.ascontiguousarray(q)


class QueryMixin:
    """``Index``'s searches; each reads the current ``snapshot`` (taken once per call) and the model."""

    model: Encoder | None

    @property
    def snapshot(self) -> Snapshot:  # pragma: no cover - provided by Index
        raise NotImplementedError

    @property
    def dim(self) -> int:
        return self.snapshot.dim

    # -- transcripts (milnce.index.transcripts, milnce.index.hybrid) ----------------------------

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

    def speech_plans(self, snap: Snapshot, texts: Sequence[str], q: np.ndarray, mode: str,
                     speech_weight: float | None) -> list[SpeechPlan | None] | None:
        """Each query's speech side over ``snap`` (None in visual mode)."""
        store = self.transcript_store()
        if mode == "visual" or store is None:
            return None
        w = check_speech_weight(speech_weight)
        sample = _percentile_sample(snap)
        plans: list[SpeechPlan | None] = []
        for text, qi in zip(texts, q):
            c = speech_scale(snap, qi, sample)
            c = c if c > 0 else 1.0  # a zero query (no word the model knows): speech alone decides
            scale = c if mode == "speech" else w * c
            plans.append(plan_speech(snap, store.speech_matches(text, snap.records.keys()), mode, scale))
        return plans

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

    def search_embeddings(self, text_emb: np.ndarray, k: int = 10, *, merge: bool = True, by_video: bool = False,
                          exact: bool | str = False, exclude_videos: Iterable[int] = (),
                          neg: np.ndarray | None = None, not_weight: float = DEFAULT_NOT_WEIGHT,
                          video_filter: VideoFilter | None = None, offset: int = 0,
                          speech_text: Sequence[str] | None = None, mode: str = "hybrid",
                          speech_weight: float | None = None) -> list[list[Moment]]:
        """Like ``search`` for text embeddings (Q x 512 or 512; ``neg``: K x 512 negative ones).
        ``exact``: False = the ANN index if one was built, else exact; True = exact (int8
        screening + float32 re-scoring, the same results as a full scan); ``"scan"`` = the plain
        full float32 scan. With the ANN index the candidate videos are approximate (each moment
        and score is still exact); searches with negatives are always exact. ``speech_text``: the
        sentence of each query, for the speech side of ``mode`` ("hybrid" or "speech",
        ``milnce.index.hybrid``)."""
        snap = self.snapshot  # one snapshot for the whole search: later commits do not change it
        q = query_matrix(text_emb, snap.dim)
        nq = None if neg is None or len(neg) == 0 else query_matrix(neg, snap.dim)
        k = int(k)
        if k < 1:
            raise UsageError(f"k must be >= 1, got {k}")
        plans = None
        if speech_text is not None:
            if len(speech_text) != len(q):
                raise UsageError(f"{len(speech_text)} speech texts for {len(q)} query embeddings")
            plans = self.speech_plans(snap, speech_text, q, check_mode(mode) or "hybrid", speech_weight)
            if plans is None and mode == "speech":
                return [[] for _ in range(len(q))]  # no transcripts: nothing is said
        return search_snapshot(snap, q, k, merge=merge, by_video=by_video, exact=exact,
                               exclude_videos=exclude_videos, neg=nq, not_weight=not_weight,
                               video_filter=video_filter, offset=int(offset), speech=plans)

    # -- curves, query by example -------------------------------------------------------------

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

    def curve(self, video_id: int, query: str | np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The score of every window of one video for a query (a sentence or an embedding), in time
        order: ``(starts, ends, scores)`` (seconds, seconds, float32 dot products). ``KeyError``
        for an unknown video id."""
        q = self.query_embedding(query)
        snap = self.snapshot
        pos = snap.position(video_id)
        rs, re_, _ = snap.ranges()
        snap.check_files()
        t = np.array(snap.times[int(rs[pos]):int(re_[pos])])
        return t[:, 0], t[:, 1], video_scores(snap, pos, q)

    def video_moments(self, video_id: int, query: str | np.ndarray, k: int | None = None) -> list[Moment]:
        """All moments of one video for a query, best first (the first ``k``): the partition of its
        windows that ``search`` ranks (``milnce.index.moments``)."""
        q = self.query_embedding(query)
        snap = self.snapshot
        pos = snap.position(video_id)
        snap.check_files()
        found = _Cursor(snap, pos, q, True).take_above(-np.inf)
        return moments_of(snap, found if k is None else found[:max(0, int(k))], q)

    def like_embedding(self, video: int | str | os.PathLike[str], start: float = 0.0) -> tuple[np.ndarray, int | None]:
        """The embedding of the window of ``video`` (an id, or a path) that starts nearest ``start``
        seconds, and the video's id (None when the video is not in the index: its window at
        ``start`` is then embedded with the model, with the index's window settings)."""
        start = float(start)
        if not math.isfinite(start) or start < 0:
            raise UsageError(f"start must be a finite number of seconds >= 0, got {start!r}")
        snap = self.snapshot
        vid: int | None = None
        path: str | os.PathLike[str] = ""
        if isinstance(video, (int, np.integer)):
            if int(video) not in snap.records:
                raise KeyError(f"no video with id {video!r} in the index")
            vid = int(video)
        else:
            path = video
            known = snap.by_path.get(user_path(path))
            if known is not None and os.path.isfile(snap.records[known].path):
                rec = snap.records[known]
                st = os.stat(rec.path)
                if st.st_size == rec.size and float(st.st_mtime) == rec.mtime:
                    vid = rec.id  # indexed and unchanged: its stored windows
        if vid is not None:
            starts, _, emb = snap.windows(vid)
            j = int(np.argmin(np.abs(starts - start)))
            return np.asarray(emb[j], np.float32), vid
        if self.model is None:
            raise IndexFolderError(f"{os.fspath(path)} is not in the index (or changed since): open the index with "
                                   "a model to embed it")
        w = WindowSettings.from_dict(snap.settings)
        ve = self.model.encode_video_file(expand_path(path), fps=w.fps, num_frames=w.num_frames, size=w.size,
                                          stride=w.stride, crop=w.crop, start=start, end=start + w.duration)
        if len(ve) == 0:
            raise UsageError(f"{os.fspath(path)}: no frames at {start:g} s")
        return np.asarray(ve.embeddings[0], np.float32), None

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

    def scores(self, text_emb: np.ndarray, rows: slice | None = None) -> np.ndarray:
        """Exact dot products of text embeddings (Q x 512) with the stored windows (Q x N rows);
        dead rows score -inf."""
        return self.snapshot.scores(text_emb, rows)
