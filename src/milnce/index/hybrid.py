"""Hybrid search: one window score from what is shown (the visual dot product) and what is said
(the speech score of the cues overlapping the window, ``milnce.index.transcripts``).

Cues to windows: a window ``[a, b)`` takes the best speech score ``s`` (0..1) of the matched cues
that overlap it (``cue.start < b`` and ``cue.end > a``); windows without one have ``s = 0``.

Blend (a calibrated sum, not rank fusion): ``score = v + w * C * s`` with ``v`` the visual score,
``w`` the speech weight (``--speech-weight``, default ``DEFAULT_SPEECH_WEIGHT``) and
``C = |q| * median |x|`` the dot product a window of the median norm would have if it pointed
exactly along the query ``q`` (the norm taken over the index's fixed percentile sample): a full
speech match adds ``w`` in cosine units. It depends on the query and the collection's norms only,
never on ``k`` or on the other results, so moments (grown from this fused per-window curve),
pages, filters, negatives and percentiles keep their meaning, and indexes of one model stay
comparable. Rank fusion over top-k lists breaks both (a window's fused rank moves with ``k``).
``mode="speech"``: ``score = C * s``; only windows with a matching cue are ranked.

The int8 screen is kept, re-derived: speech only adds (``s >= 0``), so the ``m`` best visual
windows all score at least ``V_m`` (the m-th visual score) fused, and a window outside them with
``s = 0`` scores at most ``V_m``: the best ``m`` fused windows are among the ``m`` best visual ones
(found by the screen, exactly) and the speech windows ``S`` (each scored with the canonical
``window_scores``): ``HybridSearcher.top``. The extra cost is one pass over ``S``'s rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import UsageError
from .screen import Searcher, window_scores
from .snapshot import Snapshot
from .transcripts import CueMatch

__all__ = ["MODES", "DEFAULT_SPEECH_WEIGHT", "SpeechPlan", "HybridSearcher", "check_mode", "check_speech_weight",
           "plan_speech", "fuse", "speech_scale"]

MODES = ("visual", "speech", "hybrid")
DEFAULT_SPEECH_WEIGHT = 0.1  # the best mixed recall on benchmarks/eval_hybrid.py's fixture


def check_mode(mode: str | None) -> str | None:
    if mode is None or mode in MODES:
        return mode
    raise UsageError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")


def check_speech_weight(weight: float | None) -> float:
    w = DEFAULT_SPEECH_WEIGHT if weight is None else float(weight)
    if not np.isfinite(w) or w < 0 or w > 100:
        raise UsageError(f"speech weight must be a number from 0 to 100, got {weight!r}")
    return w


def fuse(visual: np.ndarray, speech: np.ndarray, scale: float, mode: str) -> np.ndarray:
    """The one fused score (float32): ``v + scale * s``, or ``scale * s`` in speech mode
    (``scale`` already holds the speech weight)."""
    s = np.asarray(speech, np.float64) * scale
    if mode == "speech":
        return s.astype(np.float32)
    return (np.asarray(visual, np.float32).astype(np.float64) + s).astype(np.float32)


def speech_scale(snap: Snapshot, q: np.ndarray, sample: np.ndarray) -> float:
    """``C = |q| * median |x|`` over the percentile sample ``sample`` (module docstring)."""
    med = snap.memo("median_norm", lambda: float(np.median(np.linalg.norm(sample, axis=1))) if len(sample) else 1.0)
    return float(np.linalg.norm(np.asarray(q, np.float64))) * (med if np.isfinite(med) and med > 0 else 1.0)


@dataclass
class SpeechPlan:
    """One query's speech side over one snapshot: the windows with a speech score (absolute rows,
    sorted) and their scores, the matched cues per video, the mode and the scale ``w * C``."""

    mode: str
    scale: float
    rows: np.ndarray
    scores: np.ndarray
    cues: dict[int, list[CueMatch]] = field(default_factory=dict)

    def speech_of(self, rows: np.ndarray) -> np.ndarray:
        """Speech scores of absolute rows (0 where none)."""
        rows = np.asarray(rows, np.int64)
        out = np.zeros(len(rows), np.float64)
        if len(self.rows) and len(rows):
            at = np.searchsorted(self.rows, rows)
            at = np.minimum(at, len(self.rows) - 1)
            hit = self.rows[at] == rows
            out[hit] = self.scores[at[hit]]
        return out

    def curve(self, row0: int, visual: np.ndarray) -> np.ndarray:
        """The fused scores of one video's windows (rows ``row0 ..``) from their visual scores."""
        return fuse(visual, self.speech_of(np.arange(row0, row0 + len(visual))), self.scale, self.mode)

    def cues_between(self, video_id: int, start: float, end: float) -> list[CueMatch]:
        """The matched cues of a video overlapping ``[start, end]``, in time order."""
        return sorted((c for c in self.cues.get(int(video_id), []) if c.start < end and c.end > start),
                      key=lambda c: (c.start, c.end))


def plan_speech(snap: Snapshot, matches: Sequence[CueMatch], mode: str, scale: float) -> SpeechPlan:
    """Map matched cues onto the snapshot's windows (module docstring)."""
    by_video: dict[int, list[CueMatch]] = {}
    for c in matches:
        if c.video_id in snap.records:
            by_video.setdefault(c.video_id, []).append(c)
    rows: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    times = snap.times
    for vid, cues in by_video.items():
        r = snap.records[vid]
        a = int(r.row_start)
        n = int(r.num_windows)
        t = np.asarray(times[a:a + n], np.float64)
        best = np.zeros(n, np.float64)
        if n > 1 and (np.all(np.diff(t[:, 0]) >= 0) and np.all(np.diff(t[:, 1]) >= 0)):
            cs = np.array([c.start for c in cues])
            ce = np.array([c.end for c in cues])
            lo = np.searchsorted(t[:, 1], cs, side="right")  # first window ending after the cue starts
            hi = np.searchsorted(t[:, 0], ce, side="left")  # windows starting before the cue ends
            for c, x, y in zip(cues, lo.tolist(), hi.tolist()):
                if x < y:
                    np.maximum(best[x:y], c.score, out=best[x:y])
        else:
            for c in cues:
                hit = (t[:, 0] < c.end) & (t[:, 1] > c.start)
                best = np.where(hit, np.maximum(best, c.score), best)
        nz = np.flatnonzero(best > 0)
        rows.append(nz + a)
        vals.append(best[nz])
    if rows:
        allr = np.concatenate(rows).astype(np.int64)
        allv = np.concatenate(vals)
        order = np.argsort(allr)
        allr, allv = allr[order], allv[order]
    else:
        allr, allv = np.zeros(0, np.int64), np.zeros(0, np.float64)
    return SpeechPlan(mode, scale, allr, allv, by_video)


class HybridSearcher:
    """A ``Searcher`` for one query (``i``) ranking windows by the fused score (module docstring);
    ``rank`` reads it as it reads a ``Searcher`` with that query at position 0."""

    def __init__(self, base: Searcher, i: int, plan: SpeechPlan) -> None:
        self.base = base
        self.i = i
        self.plan = plan
        self.q = base.q[i:i + 1]
        self.neg = base.neg
        self.weight = base.weight
        rows = plan.rows
        keep = np.ones(len(rows), bool)
        if base.allowed is not None:
            keep &= base.allowed[rows]
        live = base.index.live_mask()
        if live is not None:
            keep &= live[rows]
        self.srows = rows[keep]
        self.sspeech = plan.scores[keep]
        self._sfused: np.ndarray | None = None
        self.n_allowed = len(self.srows) if plan.mode == "speech" else base.n_allowed

    def _speech_fused(self) -> np.ndarray:
        """The speech windows' fused scores, from ``window_scores`` (what the moments' curves use)."""
        if self._sfused is None:
            vis = window_scores(np.asarray(self.base.index.vectors[self.srows]), self.q[0], self.neg, self.weight) \
                if len(self.srows) and self.plan.mode != "speech" else np.zeros(len(self.srows), np.float32)
            self._sfused = fuse(vis, self.sspeech, self.plan.scale, self.plan.mode)
        return self._sfused

    def top(self, i: int, m: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows and fused scores of the best ``m`` windows, best first (ties by row)."""
        m = min(m, self.n_allowed)
        srows, sfused = self.srows, self._speech_fused()
        if self.plan.mode == "speech":
            order = np.lexsort((srows, -sfused))[:m]
            return srows[order], sfused[order]
        vrows, vscores = self.base.top(self.i, m)  # the fused top m lies in these and S (module docstring)
        other = ~np.isin(vrows, srows)
        rows = np.concatenate([vrows[other], srows])
        scores = np.concatenate([np.asarray(vscores, np.float32)[other], sfused])
        order = np.lexsort((rows, -scores))[:m]
        return rows[order].astype(np.int64), scores[order]

