"""The one exact score: the dot product of a query embedding with stored window vectors.

Every score a user sees (search results of every path: full scan, int8 screen, ANN re-scoring,
filters, negative terms; curves; localize) comes from ``dot_scores``. It multiplies element-wise
and sums each row on its own (numpy's pairwise sum over the 512 values), so a window's score
depends only on the query and that window: not on how many windows or queries are scored with
it, nor on their alignment in memory. A BLAS matrix product does not promise that (its blocking
depends on the shapes), which made one query score differently alone and in a batch.
"""

from __future__ import annotations

import numpy as np

__all__ = ["dot_scores", "dot_scores_many", "DOT_BLOCK"]

DOT_BLOCK = 8192  # rows multiplied at a time (bounds the temporary N x d products)


def dot_scores(vectors: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``vectors @ q`` (N, float32) for one query ``q`` (d), each row reduced on its own."""
    v = np.asarray(vectors, dtype=np.float32)
    qv = np.asarray(q, dtype=np.float32).reshape(-1)
    if v.ndim != 2:
        v = v.reshape(-1, len(qv))
    out = np.empty(len(v), np.float32)
    for s in range(0, len(v), DOT_BLOCK):
        np.sum(v[s:s + DOT_BLOCK] * qv, axis=1, dtype=np.float32, out=out[s:s + DOT_BLOCK])
    return out


def dot_scores_many(vectors: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """``queries @ vectors.T`` (Q x N, float32), each entry as ``dot_scores`` computes it."""
    qs = np.asarray(queries, dtype=np.float32)
    qs = qs.reshape(1, -1) if qs.ndim == 1 else qs
    v = np.asarray(vectors, dtype=np.float32)
    out = np.empty((len(qs), len(v)), np.float32)
    for i, q in enumerate(qs):
        out[i] = dot_scores(v, q)
    return out
