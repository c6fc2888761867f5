"""Merging matching windows into moments: adjacent windows of a video form one moment."""

from __future__ import annotations

import numpy as np

from .records import WindowRun

__all__ = ["merge_windows"]


def _components(rows: np.ndarray, video_end: np.ndarray) -> np.ndarray:
    """Labels of runs of consecutive rows of the same video. ``rows`` sorted ascending;
    ``video_end``: exclusive end row of each row's video."""
    if len(rows) == 0:
        return np.zeros(0, dtype=np.int64)
    brk = np.ones(len(rows), dtype=bool)
    brk[1:] = (np.diff(rows) != 1) | (rows[:-1] + 1 >= video_end[:-1])
    return np.cumsum(brk) - 1


def merge_windows(rows: np.ndarray, scores: np.ndarray, video_end: np.ndarray) -> list[WindowRun]:
    """Merge runs of adjacent windows: a ``WindowRun(first_row, last_row, best_row, score)`` per run,
    best first. ``video_end``: the exclusive end row of each row's video (runs never cross videos)."""
    order = np.argsort(rows, kind="stable")
    r, s, ve = rows[order], scores[order], video_end[order]
    lab = _components(r, ve)
    out: list[WindowRun] = []
    if len(r) == 0:
        return out
    bounds = np.flatnonzero(np.diff(lab)) + 1
    for a, b in zip(np.r_[0, bounds], np.r_[bounds, len(r)]):
        j = a + int(np.argmax(s[a:b]))
        out.append(WindowRun(int(r[a]), int(r[b - 1]), int(r[j]), float(s[j])))
    out.sort(key=lambda t: (-t[3], t[0]))
    return out
