"""Retrieval metrics from a caption x clip score matrix, exact on tied scores.

The rank of the correct clip ``c`` for caption ``i`` is ``1 + h + t``, where ``h`` counts the
clips scoring strictly higher than ``c`` and ``t`` depends on the ``e`` *other* clips scoring
exactly as ``c`` (ties) and the rule:

- ``"pessimistic"`` (default): ``t = e``; a tie never helps, so a model that scores every clip
  alike gets the worst rank, not R@1 = 100 %.
- ``"optimistic"``: ``t = 0`` (ties resolved in the correct clip's favour).
- ``"average"``: the expectation over a random order of the tied clips: the rank counts as
  ``1 + h + e / 2`` and R@k as the probability that the correct clip lands in the top k.

Without ties the three agree. (The public ``compute_metrics`` finds ranks by searching the
sorted rows for the correct score, which yields several or no positions for tied rows and so
counts the wrong number of captions.)
"""

from __future__ import annotations

import numpy as np

from ..errors import MilnceError, UsageError
from .protocol import TIE_RULES

__all__ = ["RECALL_AT", "retrieval_metrics", "retrieval_ranks", "tie_counts"]

RECALL_AT = (1, 5, 10)


def _check(scores: np.ndarray, targets: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] == 0 or s.shape[1] == 0:
        raise UsageError(f"scores must be a non-empty captions x clips matrix, got shape {s.shape}")
    if not np.isfinite(s).all():
        raise MilnceError(f"{int((~np.isfinite(s)).sum())} score(s) are NaN or infinite: the embeddings are broken")
    if targets is None:
        if s.shape[0] != s.shape[1]:
            raise UsageError(f"without targets the score matrix must be square (caption i <-> clip i), got {s.shape}")
        t = np.arange(s.shape[0])
    else:
        t = np.asarray(targets)
        if t.shape != (s.shape[0],) or t.dtype.kind not in "iu" or (t < 0).any() or (t >= s.shape[1]).any():
            raise UsageError(f"targets must be {s.shape[0]} clip indices in [0, {s.shape[1]})")
    return s, t.astype(np.int64)


def tie_counts(scores: np.ndarray, targets: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per caption: clips scoring strictly higher than the correct one, and other clips tied with it."""
    s, t = _check(scores, targets)
    correct = s[np.arange(len(t)), t][:, None]
    higher = (s > correct).sum(axis=1)
    equal = (s == correct).sum(axis=1) - 1
    return higher.astype(np.int64), equal.astype(np.int64)


def retrieval_ranks(scores: np.ndarray, targets: np.ndarray | None = None, ties: str = "pessimistic") -> np.ndarray:
    """1-based rank of the correct clip for each caption (float: ``"average"`` gives halves)."""
    if ties not in TIE_RULES:
        raise UsageError(f"ties must be one of {', '.join(TIE_RULES)}, got {ties!r}")
    h, e = tie_counts(scores, targets)
    extra = {"pessimistic": e, "optimistic": 0 * e, "average": e / 2.0}[ties]
    return 1.0 + h + extra


def retrieval_metrics(scores: np.ndarray, targets: np.ndarray | None = None, ties: str = "pessimistic") -> dict[str, float]:
    """R@1/5/10 (percent), median and mean rank of the correct clip, over all captions.

    ``scores[i, j]``: caption ``i`` against clip ``j``; ``targets[i]``: caption ``i``'s clip
    (default ``i``). Returns ``{"R@1", "R@5", "R@10", "MedR", "MeanR", "captions", "clips", "tied"}``
    where ``tied`` counts the captions whose correct clip shares its score with another clip.
    """
    ranks = retrieval_ranks(scores, targets, ties)
    h, e = tie_counts(scores, targets)
    out: dict[str, float] = {}
    for k in RECALL_AT:
        if ties == "average":
            # P(rank <= k) with the correct clip uniformly placed among its e + 1 tied positions
            hit = np.clip(k - h, 0, e + 1) / (e + 1)
        else:
            hit = (ranks <= k).astype(np.float64)
        out[f"R@{k}"] = float(100.0 * hit.mean())
    out["MedR"] = float(np.median(ranks))
    out["MeanR"] = float(ranks.mean())
    out["captions"] = len(ranks)
    out["clips"] = int(np.asarray(scores).shape[1])
    out["tied"] = int((e > 0).sum())
    return out
