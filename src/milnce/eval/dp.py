"""Ordered step assignment by dynamic programming: the decoder of the CrossTask evaluation.

Given a cost matrix ``C`` (``T`` positions x ``K`` steps), choose one position per step, the
steps in their listed order at strictly increasing positions, every other position background
(cost 0), minimising the total cost. This is the recurrence of the CrossTask reference code
(``dp.pyx`` of github.com/DmZhukov/CrossTask, called by its ``train.py`` with
``exactly_one=True``, ``bg_cost=0``), re-implemented from its documented behaviour:

- ``2K + 1`` states: even ``2s`` is the background after step ``s`` (``0``: before step 1),
  odd ``2s - 1`` is step ``s``. At position 0 only state 0 may precede.
- A background state is entered from itself (stay) or from the step just before it; a step
  state from the background just before it or directly from the previous step (a step lasts
  one position: ``exactly_one``).
- Ties: candidates are tried in the order stay, ``k - 1``, ``k - 2``, and a later one wins only
  when *strictly* cheaper. So a background state keeps staying on a tie, and a step prefers
  entering from the background before it over following the previous step at once.
- End: the background after the last step when it is strictly cheaper than ending on the last
  step (or the last step is unreachable); otherwise the last step (ties end on the step).
- Costs are rounded to float32 (the reference's ``float[:, :]`` argument) and summed in float64
  in position order, as the reference does, so equal costs tie exactly as they do there.

One difference, on purpose: the reference gives an unreachable state the stale value of the
previous state it computed, and its end test compares that value too. With exactly as many
positions as steps the background-after-last state is unreachable and the reference may pick
it and backtrack garbage; here unreachable states never win. With fewer positions than steps
there is no valid assignment (``None``).
"""

from __future__ import annotations

import numpy as np

from ..errors import UsageError

__all__ = ["Assignment", "assign_steps", "assignment_matrix"]


class Assignment:
    """The decoded positions (``positions[k]``: where step ``k`` is, 0-based) and total cost."""

    __slots__ = ("positions", "cost")

    def __init__(self, positions: np.ndarray, cost: float) -> None:
        self.positions = positions
        self.cost = cost

    def __repr__(self) -> str:
        return f"Assignment(positions={self.positions.tolist()}, cost={self.cost:g})"


def _costs(cost: np.ndarray) -> np.ndarray:
    c = np.asarray(cost)
    if c.ndim != 2 or c.shape[1] == 0:
        raise UsageError(f"the cost matrix must be positions x steps with at least one step, got shape {c.shape}")
    c = c.astype(np.float32).astype(np.float64)
    if not np.isfinite(c).all():
        raise UsageError(f"the cost matrix has {int((~np.isfinite(c)).sum())} NaN or infinite value(s)")
    return c


def assign_steps(cost: np.ndarray) -> Assignment | None:
    """The minimum-cost ordered assignment of ``cost`` (``T x K``), or None when ``T < K``."""
    c = _costs(cost)
    t_len, k = c.shape
    if t_len < k:
        return None
    n = 2 * k + 1
    step_of = np.where(np.arange(n) % 2 == 1, (np.arange(n) + 1) // 2, 0)  # 0 = background
    is_step = step_of > 0
    inf = np.inf
    value = np.full(n, inf)
    value[0] = 0.0
    back = np.full((t_len + 1, n), -1, np.int32)
    back[0, 0] = 0
    idx = np.arange(n)
    for t in range(1, t_len + 1):
        # candidate 1: stay (background only); candidate 2: k - 1; candidate 3: k - 2 (steps only)
        best = np.where(~is_step, value, inf)
        arg = np.where(~is_step & np.isfinite(value), idx, -1)
        prev1 = np.concatenate(([inf], value[:-1]))
        take = np.isfinite(prev1) & ((arg < 0) | (prev1 < best))
        best = np.where(take, prev1, best)
        arg = np.where(take, idx - 1, arg)
        prev2 = np.concatenate(([inf, inf], value[:-2]))
        take = is_step & np.isfinite(prev2) & ((arg < 0) | (prev2 < best))
        best = np.where(take, prev2, best)
        arg = np.where(take, idx - 2, arg)
        row = c[t - 1]
        step_cost = np.where(is_step, row[np.maximum(step_of - 1, 0)], 0.0)
        value = np.where(arg >= 0, best + step_cost, inf)
        back[t] = arg
    last, after = n - 2, n - 1
    if np.isfinite(value[after]) and (not np.isfinite(value[last]) or value[after] < value[last]):
        state = after
    else:
        state = last
    total = float(value[state])
    positions = np.full(k, -1, np.int64)
    for t in range(t_len, 0, -1):
        s = int(step_of[state])
        if s:
            positions[s - 1] = t - 1
        state = int(back[t, state])
    return Assignment(positions, total)


def assignment_matrix(positions: np.ndarray, n_positions: int) -> np.ndarray:
    """``T x K`` 0/1 matrix with a 1 at (``positions[k]``, ``k``) (the reference's ``Y``)."""
    pos = np.asarray(positions, np.int64)
    y = np.zeros((n_positions, len(pos)), np.uint8)
    ok = (pos >= 0) & (pos < n_positions)
    y[pos[ok], np.flatnonzero(ok)] = 1
    return y
