"""Ranking over one snapshot: the moments of a query, best first, with their cosine and
percentile (``search_snapshot``, ``rank``, ``moments_of``), one video's window scores
(``video_scores``), a filter's rows (``allowed_rows``), query matrices (``query_matrix``) and the
one normalised score (``cosine``). ``milnce.index.reader.IndexReader`` calls these, taking its
snapshot once per call.

Candidates come from ``milnce.index.screen.Searcher`` best first; each candidate video's whole
score curve is computed and its moments (``milnce.index.moments``) are grown exactly, so results
are the first ``k`` of one fixed ranking, whatever ``k``. Everything here reads one
``milnce.index.snapshot.Snapshot`` (records, row ranges, memory maps) through its public members.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import numpy as np

from ..errors import UsageError
from .filters import VideoFilter, require_matches
from .hybrid import HybridSearcher, SpeechPlan, fuse
from .moments import iter_video_moments
from .negatives import DEFAULT_NOT_WEIGHT
from .records import Moment
from .screen import Searcher, window_scores
from .snapshot import Snapshot

__all__ = ["PERCENTILE_SAMPLE", "video_moment_rows", "cosine", "rank", "moments_of", "video_scores", "allowed_rows",
           "search_snapshot", "query_matrix"]


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


def video_moment_rows(snap: Snapshot, pos: int, q: np.ndarray) -> list[tuple[float, int, int, int, int]]:
    """Every moment of the video at ``ranges()`` position ``pos`` for the query ``q``, best first,
    as ``(score, video id, first row, last row, peak row)`` (``moments_of`` makes ``Moment``s)."""
    return _Cursor(snap, pos, q, True).take_above(-np.inf)


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
    sample = window_scores(percentile_sample(snap), q, neg, weight)
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



def percentile_sample(snap: Snapshot) -> np.ndarray:
    """The windows percentiles are measured against: every live window up to ``PERCENTILE_SAMPLE``,
    else that many spread evenly over the live rows (fixed: the same for every query)."""

    def compute() -> np.ndarray:
        rows = percentile_rows(snap)
        # float64 once per snapshot: ``window_scores`` sums in float64, so each query's scoring of
        # the sample does not convert it again (6 ms -> 0.7 ms per query at 8,192 windows)
        return np.ascontiguousarray(snap.vectors[rows], dtype=np.float64)

    return snap.memo("pct", compute)


def percentile_rows(snap: Snapshot) -> np.ndarray:
    """The rows of the percentile sample (``percentile_sample``), fixed per snapshot."""

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

