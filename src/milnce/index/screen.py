"""The screened exact search over one snapshot's windows: the int8-screened scan with exact float32 re-scoring
(``Searcher``, over a ``Snapshot``), the int8 codes (``quantize_rows``) and the ANN candidates' exact re-scoring.

A search may carry negative terms (``neg``: the score of a window is ``q.x - weight * max_i
n_i.x``, ``milnce.index.negatives``) and a row filter (``allowed``: the rows of the videos a
``milnce.index.filters.VideoFilter`` lets through). Both apply *before* the top rows are taken:
few allowed rows are scored exactly one by one; otherwise the int8 screen runs over the combined
score with the bound ``B_p + w max_i B_i`` (derived in ``milnce.index.negatives``), disallowed
rows excluded. Negative queries never use the ANN index (its candidates come from the positive
query alone); filtered ANN searches over-fetch and refill until enough candidates pass, and fall
back to the exact search when the ANN index cannot supply them."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from .ann import candidates_for
from .ann_pq import PQDamagedError
from .negatives import DEFAULT_NOT_WEIGHT, check_weight, combine_scores
from .snapshot import Snapshot

__all__ = ["quantize_rows", "have_int8_kernel", "Searcher", "window_scores", "FEW_ROWS"]

FEW_ROWS = 50_000  # a filter allowing at most this many rows: they are scored exactly, one by one

_SCREEN_MIN_ROWS = 20000  # below this the float32 scan is as fast as the screened one
# Queries scanned together: 1. A matrix product's blocking depends on its shapes, so a query scored
# in a block of 8 got other last bits than alone (the CLI batches queries, the server does not);
# alone, a query's scores are the same bits whatever else is searched (same query, same score).
_SCREEN_QUERIES = 1


def quantize_rows(vec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int8 codes ``c`` and per-row ``(scale, residual norm, norm)`` with ``x ~ scale * c``.

    The scale is rounded *up* to a bfloat16 value (exact in the bf16 kernel), so ``|x / scale|
    <= 127``; the residual norm ``|x - scale * c|`` and the norm are rounded up, so the bound
    on the screening error that they give holds."""
    x = np.asarray(vec, dtype=np.float64)
    amax = np.abs(x).max(axis=1) / 127.0
    s32 = np.nextafter(amax.astype(np.float32), np.float32(np.inf))
    bits = s32.view(np.uint32).astype(np.uint64)
    bits = np.where(bits & 0xFFFF, (bits + 0xFFFF) & 0xFFFF0000, bits).astype(np.uint32)
    scale = bits.view(np.float32)
    scale = np.where(amax > 0, scale, np.float32(1.0)).astype(np.float32)
    codes = np.clip(np.rint(x / scale[:, None]), -127, 127).astype(np.int8)
    resid = np.linalg.norm(x - scale[:, None].astype(np.float64) * codes, axis=1)
    norm = np.linalg.norm(x, axis=1)
    up = np.float32(np.inf)
    aux = np.stack([scale, np.nextafter(resid.astype(np.float32), up), np.nextafter(norm.astype(np.float32), up)], 1)
    return codes, np.ascontiguousarray(aux, dtype=np.float32)


_INT8_KERNEL: list[bool] = []


def _HAVE_INT8_KERNEL() -> bool:  # noqa: N802
    if not _INT8_KERNEL:
        try:
            import torch

            x = torch.ones(1, 32, dtype=torch.bfloat16)
            w = torch.ones(8, 32, dtype=torch.int8)
            out = torch.ops.aten._weight_int8pack_mm(x, w, torch.ones(8, dtype=torch.bfloat16))
            _INT8_KERNEL.append(bool(torch.allclose(out.float(), torch.full((1, 8), 32.0))))
        except Exception:  # noqa: BLE001 - older torch: the float32 scan is used
            _INT8_KERNEL.append(False)
    return _INT8_KERNEL[0]


def _screen_scores(q: np.ndarray, codes: np.ndarray, scales: Any, r_max: float, n_max: float,
                   live: np.ndarray | None) -> Any:
    """Approximate scores ``scale_j * (bf16(q) . c_j)`` of every row (Q x N, torch float32, dead
    rows -inf) and, per query, a bound on ``|q . x_j - approx_j|`` valid for every row."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # read-only memory maps
        c = torch.from_numpy(codes)
    qt = torch.from_numpy(np.ascontiguousarray(q, dtype=np.float32))
    qb = qt.to(torch.bfloat16)
    approx = torch.ops.aten._weight_int8pack_mm(qb, c, scales).float()
    a_max = approx.abs().amax(dim=1).double()  # nan/inf (overflow) show up here
    if not bool(torch.isfinite(a_max).all()):
        return None
    if live is not None:
        approx[:, torch.from_numpy(~live)] = -float("inf")
    qn = qt.double().norm(dim=1)
    eq = (qt.double() - qb.double()).norm(dim=1)
    # q.x - s q_bf.c = q.(x - s c) + (q - q_bf).(s c): Cauchy-Schwarz on both terms, plus the
    # kernel's bf16 output rounding (2^-8 relative) and float32 accumulation, with margin.
    bound = 1.1 * (qn * r_max + eq * (n_max + r_max)) + (2.0 ** -7 + 1e-5) * a_max + 1e-6
    return approx, bound.tolist()


def window_scores(vectors: np.ndarray, q: np.ndarray, neg: np.ndarray | None = None,
                  weight: float = DEFAULT_NOT_WEIGHT) -> np.ndarray:
    """The score of each row of ``vectors`` for the query ``q``: ``q.x``, or with negative
    queries ``neg`` (K x d) ``q.x - weight * max_i neg_i.x`` (float32).

    The one canonical score of a window: the float32 products are exact in float64 and summed
    there, then rounded once to float32, so a window's score does not depend on which other rows
    are scored with it (a float32 BLAS call rounds a row differently by its position in the block:
    the same window scored 1 ulp apart in a page of 7 and a page of 42)."""
    v = np.asarray(vectors, dtype=np.float64)
    s = (v @ np.asarray(q, np.float64)).astype(np.float32)
    if neg is not None and len(neg):
        s = combine_scores(s, (v @ np.asarray(neg, np.float64).T).T.astype(np.float32), weight)
    return np.asarray(s, dtype=np.float32)


class Searcher:
    """Top-m live rows per query, exactly (full scan) or via the ANN index + exact re-scoring;
    with negative queries ``neg`` (K x d, shared by every query) and ``weight``, by the combined
    score; with ``allowed`` (a boolean mask of live rows), among those rows only."""

    def __init__(self, index: Snapshot, q: np.ndarray, exact: bool | str = False, *,
                 neg: np.ndarray | None = None, weight: float = DEFAULT_NOT_WEIGHT,
                 allowed: np.ndarray | None = None) -> None:
        self.index = index
        self.q = q
        self.weight = check_weight(weight)
        self.neg = None if neg is None or len(neg) == 0 or self.weight == 0 else np.ascontiguousarray(neg, np.float32)
        self.allowed = allowed
        self.n_allowed = index.num_live if allowed is None else int(np.count_nonzero(allowed))
        self._neg_full: np.ndarray | None = None
        self._neg_approx: Any = None
        self.ann = None if exact or self.neg is not None else index.ann()
        self._scores: tuple[int, np.ndarray] | None = None
        self._approx: Any = None
        self.no_screen = exact == "scan"  # the plain float32 scan (benchmarks, checks)
        self._cache: dict[int, tuple[int, np.ndarray, np.ndarray]] = {}
        self._ann_cache: dict[int, tuple[int, np.ndarray, np.ndarray]] = {}
        if self.ann is not None:
            self.ann_rows = index.ann_rows

    def scores_of(self, i: int, vectors: np.ndarray) -> np.ndarray:
        """Exact (combined) scores of query ``i`` for the rows ``vectors``: ``window_scores``, the
        one canonical score (float64 sums rounded once; torch, not numpy's BLAS: two thread pools
        fighting over the cores cost tens of ms per query)."""
        import torch

        # float64 copies (writable: torch refuses to share a read-only memory map's pages silently)
        v = torch.from_numpy(np.array(vectors, dtype=np.float64))
        s = (v @ torch.from_numpy(np.array(self.q[i], dtype=np.float64))).float().numpy()
        if self.neg is not None:
            s = combine_scores(s, (v @ torch.from_numpy(np.array(self.neg, dtype=np.float64)).T).float().numpy().T,
                               self.weight)
        return np.asarray(s, dtype=np.float32)

    def canonical(self, i: int, rows: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``rows`` re-scored with the canonical score (``scores_of``) and re-sorted best first (ties
        by row): what any path reports for a window is the same bits, however it was found."""
        if len(rows) == 0:
            return rows, scores
        s = self.scores_of(i, np.asarray(self.index.vectors[np.asarray(rows, np.int64)]))
        finite = np.isfinite(np.asarray(scores, np.float64))
        s = np.where(finite, s, np.asarray(scores, np.float32))
        order = np.lexsort((rows, -s))
        return np.asarray(rows)[order], s[order]

    def _exact_scores(self, i: int) -> np.ndarray:
        """Full float32 (combined) scores of query ``i``, -inf outside the allowed rows (computed
        for a few queries at a time)."""
        b = i // _SCREEN_QUERIES
        if self._scores is None or self._scores[0] != b:
            s = self.index.scores(self.q[b * _SCREEN_QUERIES:(b + 1) * _SCREEN_QUERIES])
            if self.neg is not None:
                if self._neg_full is None:
                    self._neg_full = self.index.scores(self.neg)
                s = np.stack([combine_scores(row, self._neg_full, self.weight) for row in s])
            if self.allowed is not None:
                s[:, ~self.allowed] = -np.inf
            self._scores = (b, s)
        return self._scores[1][i % _SCREEN_QUERIES]

    def _few_top(self, i: int, m: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-m among few allowed rows, each scored exactly."""
        assert self.allowed is not None
        rows = np.flatnonzero(self.allowed)
        s = self.scores_of(i, np.asarray(self.index.vectors[rows]))
        order = np.lexsort((rows, -s))[:m]
        return rows[order].astype(np.int64), s[order]

    def top(self, i: int, m: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows and exact scores of the best ``m`` live (allowed) windows for query ``i``, best first."""
        idx = self.index
        m = min(m, self.n_allowed)
        hit = self._cache.get(i)
        if hit is not None and hit[0] >= m:
            return hit[1][:m], hit[2][:m]
        idx.check_files()  # a truncated store: an error, not SIGBUS
        got = None
        rescore = False  # whether some scores come from a batched float32 scan, not ``scores_of``
        if m == 0:
            got = (np.zeros(0, np.int64), np.zeros(0, np.float32))
        elif self.allowed is not None and self.n_allowed <= FEW_ROWS:
            got = self._few_top(i, m)
        elif self.ann is not None and m * 4 < self.n_allowed:
            got = self._ann_top(i, m)
            rescore = got is not None and self.ann_rows < idx.num_rows  # the rows after the ANN index
        if got is None:
            got = self._screened_top(i, m)
        if got is not None:
            rows, scores = got
        else:
            rescore = True
            s = self._exact_scores(i)
            if m < len(s):
                part = np.argpartition(-s, m - 1)[:m]
            else:
                part = np.arange(len(s))
            order = np.lexsort((part, -s[part]))
            rows = part[order]
            rows = rows[np.isfinite(s[rows])][:m]
            scores = s[rows]
        if rescore:
            rows, scores = self.canonical(i, rows, scores)
        self._cache[i] = (m, rows, scores)
        return rows, scores

    def _screened_top(self, i: int, m: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Exact top-m through the int8 codes: a quarter of the bytes of the float32 store are
        scanned, then every row whose score *could* reach the top m (a proven bound on the
        quantisation error) is re-scored from the float32 store. None: use the full scan."""
        idx = self.index
        if self.no_screen or idx.num_rows < _SCREEN_MIN_ROWS or m > 1000:
            return None
        codes = idx.codes()
        if codes is None or not _HAVE_INT8_KERNEL():
            return None
        b = i // _SCREEN_QUERIES  # approximate scores for a few queries at a time (N floats each)
        if self._approx is None or self._approx[0] != b:
            got = _screen_scores(self.q[b * _SCREEN_QUERIES:(b + 1) * _SCREEN_QUERIES], codes[0],
                                 *idx.code_stats(), idx.live_mask())
            if got is None:
                self.no_screen = True
                return None
            self._approx = (b, *got)
        approx, bound = self._approx[1][i % _SCREEN_QUERIES], self._approx[2][i % _SCREEN_QUERIES]
        import torch

        if self.neg is not None:  # c^ = a_p - w max_i a_i, B = B_p + w max_i B_i (milnce.index.negatives)
            if self._neg_approx is None:
                self._neg_approx = _screen_scores(self.neg, codes[0], *idx.code_stats(), idx.live_mask())
                if self._neg_approx is None:
                    self.no_screen = True
                    return None
            neg_a, neg_b = self._neg_approx
            approx = torch.where(torch.isfinite(approx), approx - self.weight * neg_a.amax(dim=0),
                                 torch.full_like(approx, -float("inf")))
            bound = bound + self.weight * max(neg_b)
        if self.allowed is not None:
            approx = approx.masked_fill(torch.from_numpy(~self.allowed), -float("inf"))
        top = torch.topk(approx, m).values
        floor = float(top[-1]) - bound  # m rows score at least this
        cand = torch.nonzero(approx >= floor - bound).flatten().numpy()
        if len(cand) > max(50 * m, 20000):  # the bound is too loose here: scan everything
            return None
        exact = self.scores_of(i, np.asarray(idx.vectors[cand]))
        order = np.lexsort((cand, -exact))[:m]
        return cand[order].astype(np.int64), exact[order].astype(np.float32)

    def _ann_top(self, i: int, m: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Top-m from ``4m`` (at least the index's ``candidates_for``: 400, or an IVF-PQ index's
        ``rerank``) ANN candidates re-scored exactly; a later call for
        more rows of the same query reuses them while they are enough. Under a filter the fetch
        is scaled by the share of allowed rows and refilled (4x) until ``4m`` candidates pass;
        None when the ANN index cannot supply them (the caller searches exactly)."""
        hit = self._ann_cache.get(i)
        if hit is not None and 4 * m <= len(hit[1]):
            return hit[1][:m], hit[2][:m]
        share = self.n_allowed / max(1, self.index.num_live)
        r = max(candidates_for(self.ann, m), 2 * hit[0] if hit is not None else 0)
        r = int(min(max(r, r / max(share, 1e-9)), max(self.ann_rows, 1)))
        while True:
            try:
                rows, scores, exhausted = self._ann_fetch(i, r)
            except PQDamagedError as exc:  # a probed list differs from its checksum: exact from now on
                self.index.ann_damaged(str(exc))
                self.ann = None
                return None
            if len(rows) >= 4 * m or exhausted or r >= self.ann_rows:
                break
            r = min(4 * r, self.ann_rows)
        self._ann_cache[i] = (r, rows, scores)
        if len(rows) < m and self.allowed is not None:
            return None
        return rows[:m], scores[:m]

    def _ann_fetch(self, i: int, r: int) -> tuple[np.ndarray, np.ndarray, bool]:
        idx = self.index
        q = self.q[i]
        assert self.ann is not None
        _, ids = self.ann.search(q[None], r)
        cand = ids[0]
        cand = cand[(cand >= 0) & (cand < self.ann_rows)]
        exhausted = len(cand) < r
        mask = idx.live_mask() if self.allowed is None else self.allowed
        if mask is not None:
            cand = cand[mask[cand]]
        cand = np.unique(cand)
        scores = self.scores_of(i, np.asarray(idx.vectors[cand])) if len(cand) else np.zeros(0, np.float32)
        if self.ann_rows < idx.num_rows:  # rows added after the ANN index was built: scan them
            tail = idx.scores(q[None], slice(self.ann_rows, idx.num_rows))[0]
            if self.allowed is not None:
                tail[~self.allowed[self.ann_rows:]] = -np.inf
            ok = np.flatnonzero(np.isfinite(tail))
            cand = np.concatenate([cand, ok + self.ann_rows])
            scores = np.concatenate([scores, tail[ok]])
        order = np.lexsort((cand, -scores))
        return cand[order], scores[order].astype(np.float32), exhausted



have_int8_kernel = _HAVE_INT8_KERNEL
