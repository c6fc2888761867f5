r"""Negative terms ("dog, not leash"): a window's score becomes

    combined_j = pos_j - weight * max_i neg_ij

(``pos_j``/``neg_ij``: the dot products of the positive and of each negative query with window
``j``), per window, *before* moments are formed, so a moment is re-ranked by its best combined
window, not merely dropped.

Default weight ``DEFAULT_NOT_WEIGHT = 0.5``. Why not 1: a window's dot products with any two
sentences are correlated (a shared, query-independent part: how "typical" the window is, and the
positive and negative often describe the same scene: a dog *with* a leash matches "dog" well).
At ``weight = 1`` that shared part cancels completely and the ranking becomes "more dog than
leash", which also sinks good dog-only windows that are generically similar to many sentences.
At 0.5 a window is pushed below another only if its negative score is higher by twice the gap in
their positive scores: a strong, specific match to the negative moves a window down a lot, a
weak one barely. The max (not the sum) keeps several ``--not`` terms from counting the shared
part several times. It cannot be tuned here (random weights, no labelled footage), so a user
tunes it on their own index: pick a few searches where an unwanted thing shows up in the top 10,
run them with ``--not-weight 0.25, 0.5, 1, 2`` and keep the smallest weight that clears the top
results of the unwanted thing without losing the wanted ones (``milnce search --index IDX "leash"``
alone shows the scale of the negative's scores; the weight is relative to it, since both terms
are dot products with the same window).

Exactness of the int8 pre-scan (``milnce.index.screen``) for this score. The screen gives, per
query ``q``, approximate scores ``a_qj`` and a bound ``B_q`` with ``|q.x_j - a_qj| <= B_q`` for
every row. For the combined score use

    c^_j = a_pj - w * max_i a_ij,      B = B_p + w * max_i B_i      (w >= 0).

Then ``|c_j - c^_j| <= |pos_j - a_pj| + w * |max_i neg_ij - max_i a_ij| <= B_p + w * max_i B_i``,
because the max is 1-Lipschitz in the sup norm (``|max_i u_i - max_i v_i| <= max_i |u_i -
v_i|``). The argument of the positive-only screen carries over unchanged: let ``t`` be the
m-th largest ``c^``; the m rows with ``c^ >= t`` have ``c >= t - B``, so the true m-th best
combined score is ``>= t - B``, and any row that could reach it has ``c^ >= t - 2B``. Re-scoring
exactly (all ``1 + K`` queries) every row with ``c^_j >= t - 2B`` (``screen_candidates``) gives
the exact top m. So negative queries keep the screened exact search; what changes is its cost:
``1 + K`` int8 scans instead of one, and a bound ``(1 + w)``-times looser, so more candidates
(the searcher's "too many candidates: scan everything" fallback applies as before). A negative
weight would need ``|w|`` in the bound and reverses the meaning; it is refused.

The ANN path is different: its candidates come from the positive query alone, so a window with a
modest positive score and no negative match can be missed; search with negatives over an ANN
index over-fetches (``max(4m, 400)`` and more, as for filters) and is as approximate as the ANN
itself; the wiring plan prefers exact (screened) search for negative queries.
"""

from __future__ import annotations

import math
import shlex

import numpy as np

from ..errors import UsageError

__all__ = ["DEFAULT_NOT_WEIGHT", "MAX_NOT_WEIGHT", "check_weight", "combine_scores", "combined_top", "screen_candidates",
           "split_query"]

DEFAULT_NOT_WEIGHT = 0.5
MAX_NOT_WEIGHT = 1e6  # float32 scores times more than this overflow towards -inf: every row would drop out


def check_weight(weight: float) -> float:
    """``weight`` as a float, refused unless a number from 0 to ``MAX_NOT_WEIGHT``."""
    try:
        w = float(weight)
    except (TypeError, ValueError):
        w = math.nan
    if not math.isfinite(w) or not 0 <= w <= MAX_NOT_WEIGHT:
        raise UsageError(f"--not-weight must be a number from 0 to {MAX_NOT_WEIGHT:g}, got {weight!r}")
    return w


def combine_scores(pos: np.ndarray, neg: np.ndarray | None, weight: float = DEFAULT_NOT_WEIGHT) -> np.ndarray:
    """``pos - weight * max(neg, axis=0)`` per window (``pos``: N, ``neg``: K x N or None/empty:
    ``pos`` unchanged). ``-inf`` in ``pos`` (dead rows) stays ``-inf``."""
    w = check_weight(weight)
    p = np.asarray(pos, dtype=np.float32)
    if neg is None or len(neg) == 0 or w == 0:
        return p.copy()
    n = np.asarray(neg, dtype=np.float32)
    if n.ndim == 1:
        n = n[None]
    if n.shape[1:] != p.shape:
        raise UsageError(f"negative scores of shape {n.shape} for {p.shape} positive scores")
    worst = n.max(axis=0)
    with np.errstate(invalid="ignore"):
        out = p - np.float32(w) * worst
    out[~np.isfinite(p)] = -np.inf
    return out


def combined_top(vectors: np.ndarray, pos_q: np.ndarray, neg_q: np.ndarray | None, m: int,
                 weight: float = DEFAULT_NOT_WEIGHT, live: np.ndarray | None = None,
                 block: int = 1 << 16) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``m`` rows by combined score over ``vectors`` (N x d, e.g. a memory map, read
    ``block`` rows at a time), best first, ties by row; ``live``: rows allowed (bool, N)."""
    q = np.asarray(pos_q, dtype=np.float32).reshape(1, -1)
    nq = np.zeros((0, q.shape[1]), np.float32) if neg_q is None else np.asarray(neg_q, np.float32).reshape(-1, q.shape[1])
    allq = np.concatenate([q, nq])
    best_s = np.zeros(0, np.float32)
    best_r = np.zeros(0, np.int64)
    for s in range(0, len(vectors), block):
        sc = allq @ np.asarray(vectors[s:s + block], dtype=np.float32).T
        c = combine_scores(sc[0], sc[1:], weight)
        if live is not None:
            c[~live[s:s + len(c)]] = -np.inf
        rows = np.arange(s, s + len(c))
        best_s, best_r = np.concatenate([best_s, c]), np.concatenate([best_r, rows])
        keep = np.isfinite(best_s)
        best_s, best_r = best_s[keep], best_r[keep]
        if len(best_s) > m:
            order = np.lexsort((best_r, -best_s))[:m]
            best_s, best_r = best_s[order], best_r[order]
    order = np.lexsort((best_r, -best_s))[:m]
    return best_r[order], best_s[order]


def screen_candidates(approx_pos: np.ndarray, approx_neg: np.ndarray | None, bound_pos: float,
                      bound_neg: np.ndarray | list[float] | None, m: int,
                      weight: float = DEFAULT_NOT_WEIGHT) -> np.ndarray:
    """Rows whose exact combined score could be among the top ``m``, from screened scores
    ``approx_pos`` (N) / ``approx_neg`` (K x N) with error bounds ``bound_pos`` / ``bound_neg``
    (K): every row with ``c^ >= t - 2B`` (see the module docstring); sorted row numbers."""
    w = check_weight(weight)
    c = combine_scores(approx_pos, approx_neg, w)
    bn = 0.0 if bound_neg is None or len(bound_neg) == 0 else float(np.max(bound_neg))
    b = float(bound_pos) + w * bn
    finite = np.isfinite(c)
    if int(finite.sum()) <= m:
        return np.flatnonzero(finite)
    t = float(np.partition(c[finite], -m)[-m])
    return np.flatnonzero(c >= t - 2 * b)


def split_query(text: str) -> tuple[str, list[str]]:
    """The UI's query box syntax: ``dog -leash -"red cat"`` -> ``("dog", ["leash", "red cat"])``.
    A ``-`` starts a negative term only at the start of a word (``t-shirt`` stays positive);
    quotes group words. A query of negatives only is refused."""
    try:
        words = shlex.split(text, posix=True)
    except ValueError:  # an unbalanced quote: split on spaces
        words = text.split()
    pos, neg = [], []
    for w in words:
        if w.startswith("-") and len(w) > 1:
            neg.append(w[1:].strip())
        elif w != "-":
            pos.append(w)
    neg = [n for n in neg if n]
    if not pos:
        raise UsageError(f"{text!r}: nothing to search for besides the excluded terms")
    return " ".join(pos), neg
