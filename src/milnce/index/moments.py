"""What a *moment* is: a k-independent partition of one video's windows for one query.

Definition (README, "Search your videos"). For one video and one query, with window scores
``s_0 .. s_{n-1}`` (dot products, in time order):

1. ``margin = MOMENT_MARGIN * (max(s) - median(s))`` (``MOMENT_MARGIN`` = 0.1): a tenth of how far
   the video's best window stands above its typical window, so the rule adapts to each video's
   and each query's score scale and does not depend on anything else in the index.
2. Peaks are taken greedily: the highest-scoring window not yet in a moment (ties: the earlier
   window) is a peak; its moment is the maximal contiguous run of windows around it that are not
   in an earlier moment and score ``>= peak - margin``. Repeat until every window is in a moment.
3. A moment's score is its peak's score.

So moments partition the windows, never overlap, and depend only on that video's scores for the
query: never on ``k`` or on the other videos. A search ranks all moments of all videos by score
(ties: lower video id, then earlier start) and ``k`` takes a prefix of that one ranking.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

__all__ = ["MOMENT_MARGIN", "moment_margin", "video_moments", "iter_video_moments"]

MOMENT_MARGIN = 0.1  # fraction of (max - median) of a video's window scores


def moment_margin(scores: np.ndarray, fraction: float = MOMENT_MARGIN) -> float:
    """How far below its peak a window may score and still join the peak's moment."""
    s = np.asarray(scores, dtype=np.float64)
    if s.size == 0:
        return 0.0
    spread = float(s.max() - np.median(s))
    return fraction * spread if np.isfinite(spread) else 0.0


def iter_video_moments(scores: np.ndarray, margin: float | None = None) -> Iterator[tuple[int, int, int, float]]:
    """Yield one video's moments ``(first, last, peak, score)`` (window positions, inclusive), best
    first, by the definition in this module's docstring. Lazy: stop reading when the scores get
    too low, and only the windows of the moments read so far are visited."""
    s = np.asarray(scores, dtype=np.float32)
    n = len(s)
    if n == 0:
        return
    m = moment_margin(s) if margin is None else float(margin)
    order = np.lexsort((np.arange(n), -s))  # best first; ties: earlier window
    taken = np.zeros(n, dtype=bool)
    sl = s.tolist()
    for p in order.tolist():
        if taken[p]:
            continue
        floor = sl[p] - m
        a = p
        while a > 0 and not taken[a - 1] and sl[a - 1] >= floor:
            a -= 1
        b = p
        while b + 1 < n and not taken[b + 1] and sl[b + 1] >= floor:
            b += 1
        taken[a:b + 1] = True
        yield a, b, p, sl[p]


def video_moments(scores: np.ndarray, margin: float | None = None) -> list[tuple[int, int, int, float]]:
    """All moments of one video ``(first, last, peak, score)``, best first (a partition of its windows)."""
    return list(iter_video_moments(scores, margin))

