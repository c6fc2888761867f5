"""Ranks of one torchrun extraction finishing together: none exits (so torchrun stops none) until
every rank is done and rank 0 has merged every rank's failures into one list.

Each rank, once its share is done, puts its failures on the torchrun rendezvous store (the agent's
``TCPStore`` at ``MASTER_ADDR:MASTER_PORT``; no process group, so no 30-minute collective
timeout) and waits; rank 0 waits for all of them, writes the merged list (``failures.csv``, or
the file of the enclosing ``--shard``/SLURM share) and says so on the store; then every rank
exits: the others with status 0, rank 0 last (after their processes are gone, so torchrun stops
no rank) with the job's status, 1 if any rank had a failure. The waits have a timeout of
``MILNCE_RANK_WAIT_S`` seconds (default 30 days): longer than any job.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from ..errors import MilnceError
from .inputs import Shard
from .store import pid_alive

__all__ = ["torchrun_world", "finish_together"]

log = logging.getLogger("milnce.extract")

_DEFAULT_WAIT_S = 30 * 24 * 3600.0


def torchrun_world(env: Mapping[str, str] | None = None) -> tuple[int, int] | None:
    """``(rank, world size)`` under torchrun with several ranks, else None."""
    env = os.environ if env is None else env
    try:
        rank, world = int(env.get("RANK", "")), int(env.get("WORLD_SIZE", ""))
    except ValueError:
        return None
    if world < 2 or "MASTER_ADDR" not in env or "MASTER_PORT" not in env:
        return None
    return rank, world


def _store(env: Mapping[str, str], rank: int, wait_s: float) -> Any:
    from torch.distributed import TCPStore

    agent = env.get("TORCHELASTIC_USE_AGENT_STORE") == "True"  # torchrun's agent hosts the store
    try:
        return TCPStore(env["MASTER_ADDR"], int(env["MASTER_PORT"]), is_master=rank == 0 and not agent,
                        timeout=timedelta(seconds=wait_s), wait_for_workers=False)
    except (RuntimeError, OSError, ValueError) as exc:
        raise MilnceError(f"cannot reach the torchrun rendezvous store at {env['MASTER_ADDR']}:"
                          f"{env['MASTER_PORT']}: {exc}") from exc


def finish_together(out_dir: str, shard: Shard, failures: list[tuple[str, str]],
                    env: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """Wait for every torchrun rank; returns the failures that decide this process's exit status:
    on rank 0 those of all ranks (it also writes the merged list, and exits last, after the other
    ranks' processes are gone), on the others none (they exit 0 once rank 0 has the merge).
    Without torchrun: ``failures`` as given."""
    env = os.environ if env is None else env
    world = torchrun_world(env)
    if world is None:
        return failures
    rank, size = world
    wait_s = float(env.get("MILNCE_RANK_WAIT_S", "") or _DEFAULT_WAIT_S)
    store = _store(env, rank, wait_s)
    prefix = f"milnce-extract/{env.get('TORCHELASTIC_RUN_ID', '')}/{env.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    rows = [[p.encode("utf-8", "surrogateescape").decode("latin-1"), r] for p, r in failures]  # any bytes, as JSON
    store.set(f"{prefix}/failures/{rank}", json.dumps(rows))
    keys = [f"{prefix}/failures/{r}" for r in range(size)]
    store.wait(keys, timedelta(seconds=wait_s))
    merged: list[tuple[str, str]] = []
    for key in keys:
        for p, r in json.loads(store.get(key)):
            merged.append((p.encode("latin-1").decode("utf-8", "surrogateescape"), r))
    if rank == 0:
        _write_merged(out_dir, shard, size, merged)
        store.set(f"{prefix}/merged", "1")
        others = [f"{prefix}/leaving/{r}" for r in range(1, size)]
        store.wait(others, timedelta(seconds=wait_s))
        _wait_gone([json.loads(store.get(k)) for k in others])
        return merged
    store.wait([f"{prefix}/merged"], timedelta(seconds=wait_s))
    store.set(f"{prefix}/leaving/{rank}", json.dumps([socket.gethostname(), os.getpid()]))
    return []


def _wait_gone(procs: list[list[Any]], limit_s: float = 60.0) -> None:
    """Wait until the other ranks' processes on this host have exited (torchrun stops the ones
    still running when a rank exits with a failure status); others: a short grace period."""
    host = socket.gethostname()
    deadline = time.monotonic() + limit_s
    local = [int(pid) for h, pid in procs if h == host]
    if len(local) < len(procs):
        time.sleep(min(5.0, limit_s))
    while local and time.monotonic() < deadline:
        local = [pid for pid in local if pid_alive(pid)]
        time.sleep(0.05)


def _write_merged(out_dir: str, shard: Shard, size: int, merged: list[tuple[str, str]]) -> None:
    from .runner import failures_file, write_failures

    outer = Shard(shard.index // size, max(1, shard.count // size))
    target = failures_file(out_dir, outer, merged=True)
    if merged:
        write_failures(target, merged, shards=outer.count if outer.count > 1 else None)
        log.info("failures of all %d ranks: %s", size, target)
    elif outer.count == 1 and os.path.exists(target):  # an earlier run's list: superseded by this run
        os.remove(target)
