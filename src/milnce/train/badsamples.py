"""Unreadable training samples: skipped, counted, reported, and a collective stop rule.

A sample whose video does not decode (or, in shards, whose record is broken) is replaced by
another one drawn from its own random generator, and counted. Every step the counts of all
processes are summed (one small all-reduce), so every rank takes the same decision: the run
stops with ``TrainingError`` when more than ``fraction`` of the samples drawn over the last
``window`` steps were bad (a window not yet full counts as full of good samples), or when a
sample found no readable replacement at all.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import torch
import torch.distributed as dist

from ..errors import TrainingError
from .dist import DistContext

__all__ = ["BadSamples"]


class BadSamples:
    """Per-step accounting of skipped samples over all processes."""

    def __init__(self, ctx: DistContext, fraction: float, window: int, batch_size: int) -> None:
        self.ctx, self.fraction, self.window, self.batch = ctx, float(fraction), int(window), int(batch_size)
        self.recent: deque[int] = deque(maxlen=self.window)
        self.total = 0
        self.since_log = 0
        self.examples: list[str] = []

    def update(self, step: int, info: dict[str, Any]) -> list[str]:
        """Count this step's bad samples (``info``: the loader's ``bad``/``failed``/``notes``);
        returns the new notes (every rank's, on the main one); raises when the rule says stop."""
        counts = torch.tensor([int(info["bad"].sum()), int(info["failed"].sum())], dtype=torch.int64)
        notes = [n for block in info["notes"] for n in str(block).split("\n") if n]
        if self.ctx.distributed:
            dev = self.ctx.device if dist.get_backend() == "nccl" else torch.device("cpu")
            counts = counts.to(dev)
            dist.all_reduce(counts)
            counts = counts.cpu()
            if int(counts[0]):
                gathered: list[Any] = [None] * self.ctx.world_size
                dist.all_gather_object(gathered, notes)
                notes = [n for part in gathered for n in (part or [])]
        bad, failed = int(counts[0]), int(counts[1])
        self.recent.append(bad)
        self.total += bad
        self.since_log += bad
        if len(self.examples) < 20:
            self.examples.extend(notes[: 20 - len(self.examples)])
        if failed:
            raise TrainingError(f"step {step}: {failed} sample(s) found no readable video after many tries "
                                f"({self.total} bad samples so far; e.g. {notes[-1] if notes else '?'})")
        in_window = sum(self.recent)
        if in_window * (1 - self.fraction) > self.fraction * self.window * self.batch:
            raise TrainingError(
                f"step {step}: {in_window} unreadable samples over the last {self.window} step(s) of "
                f"{self.batch} clips, more than --bad-fraction {self.fraction:g}; e.g. "
                f"{notes[-1] if notes else (self.examples[-1] if self.examples else '?')}")
        return notes

    def take_log_count(self) -> int:
        n, self.since_log = self.since_log, 0
        return n
