"""Exact search over the stored windows: the int8-screened scan with exact float32 re-scoring
(``Searcher``, over a ``Snapshot``), the int8 codes (``quantize_rows``) and the ANN candidates' exact re-scoring."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from .layout import SCAN_BLOCK
from .snapshot import Snapshot

__all__ = ["quantize_rows", "have_int8_kernel", "Searcher", "SCAN_BLOCK"]

_SCREEN_MIN_ROWS = 20000  # below this the float32 scan is as fast as the screened one
_SCREEN_QUERIES = 8  # queries screened together


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


class Searcher:
    """Top-m live rows per query, exactly (full scan) or via the ANN index + exact re-scoring."""

    def __init__(self, index: Snapshot, q: np.ndarray, exact: bool | str = False) -> None:
        self.index = index
        self.q = q
        self.ann = None if exact else index.ann()
        self._scores: tuple[int, np.ndarray] | None = None
        self._approx: Any = None
        self.no_screen = exact == "scan"  # the plain float32 scan (benchmarks, checks)
        self._cache: dict[int, tuple[int, np.ndarray, np.ndarray]] = {}
        self._ann_cache: dict[int, tuple[int, np.ndarray, np.ndarray]] = {}
        if self.ann is not None:
            self.ann_rows = index.ann_rows

    def _exact_scores(self, i: int) -> np.ndarray:
        """Full float32 scores of query ``i`` (computed for a few queries at a time)."""
        b = i // _SCREEN_QUERIES
        if self._scores is None or self._scores[0] != b:
            self._scores = (b, self.index.scores(self.q[b * _SCREEN_QUERIES:(b + 1) * _SCREEN_QUERIES]))
        return self._scores[1][i % _SCREEN_QUERIES]

    def top(self, i: int, m: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows and exact scores of the best ``m`` live windows for query ``i``, best first."""
        idx = self.index
        m = min(m, idx.num_live)
        hit = self._cache.get(i)
        if hit is not None and hit[0] >= m:
            return hit[1][:m], hit[2][:m]
        idx.check_files()  # a truncated store: an error, not SIGBUS
        if self.ann is not None and m * 4 < idx.num_live:
            rows, scores = self._ann_top(i, m)
        elif (got := self._screened_top(i, m)) is not None:
            rows, scores = got
        else:
            s = self._exact_scores(i)
            if m < len(s):
                part = np.argpartition(-s, m - 1)[:m]
            else:
                part = np.arange(len(s))
            order = np.lexsort((part, -s[part]))
            rows = part[order]
            rows = rows[np.isfinite(s[rows])][:m]
            scores = s[rows]
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

        top = torch.topk(approx, m).values
        floor = float(top[-1]) - bound  # m rows score at least this
        cand = torch.nonzero(approx >= floor - bound).flatten().numpy()
        if len(cand) > max(50 * m, 20000):  # the bound is too loose here: scan everything
            return None
        # torch, not numpy's BLAS, for the re-scoring: two thread pools fighting over the cores
        # cost tens of ms per query.
        exact = (torch.from_numpy(np.asarray(idx.vectors[cand])) @ torch.from_numpy(self.q[i])).numpy()
        order = np.lexsort((cand, -exact))[:m]
        return cand[order].astype(np.int64), exact[order].astype(np.float32)

    def _ann_top(self, i: int, m: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-m from ``4m`` (at least 400) ANN candidates re-scored exactly; a later call for
        more rows of the same query reuses them while they are enough."""
        hit = self._ann_cache.get(i)
        if hit is not None and 4 * m <= hit[0]:
            return hit[1][:m], hit[2][:m]
        r = max(4 * m, 400, 2 * hit[0] if hit is not None else 0)
        rows, scores = self._ann_fetch(i, r)
        self._ann_cache[i] = (r, rows, scores)
        return rows[:m], scores[:m]

    def _ann_fetch(self, i: int, r: int) -> tuple[np.ndarray, np.ndarray]:
        idx = self.index
        q = self.q[i]
        assert self.ann is not None
        _, ids = self.ann.search(q[None], r)
        cand = ids[0]
        cand = cand[(cand >= 0) & (cand < self.ann_rows)]
        mask = idx.live_mask()
        if mask is not None:
            cand = cand[mask[cand]]
        cand = np.unique(cand)
        if len(cand):
            import torch

            scores = (torch.from_numpy(np.asarray(idx.vectors[cand])) @ torch.from_numpy(q)).numpy()
        else:
            scores = np.zeros(0, np.float32)
        if self.ann_rows < idx.num_rows:  # rows added after the ANN index was built: scan them
            tail = idx.scores(q[None], slice(self.ann_rows, idx.num_rows))[0]
            ok = np.flatnonzero(np.isfinite(tail))
            cand = np.concatenate([cand, ok + self.ann_rows])
            scores = np.concatenate([scores, tail[ok]])
        order = np.lexsort((cand, -scores))
        return cand[order], scores[order].astype(np.float32)



have_int8_kernel = _HAVE_INT8_KERNEL
