"""The training loader of either layout (captioned-video CSVs or tar shards) and its resume state."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ..errors import UsageError
from ..plural import plural
from ..text import Tokenizer
from .config import TrainConfig
from .data import DataSplit, StepBatchSampler, TrainClips, load_split, worker_init
from .dist import DistContext
from .shards import ShardClips, ShardSet, is_shard_spec, shard_set

__all__ = ["find_data", "make_loader", "note_position", "gather_positions"]


def make_loader(data: DataSplit | ShardSet, cfg: TrainConfig, tokenizer: Tokenizer, *, hflip: bool, start: int,
                ctx: DistContext, resume: dict[str, Any], pin: bool) -> tuple[torch.utils.data.DataLoader, str]:
    """This process's loader of ``(uint8 clips, ids, info)`` batches from step ``start`` on, and a
    description for the log."""
    local = cfg.process_batch(ctx.world_size)
    common: dict[str, Any] = {
        "num_workers": cfg.workers, "worker_init_fn": worker_init, "pin_memory": pin,
        "prefetch_factor": 4 if cfg.workers else None,
        "multiprocessing_context": "fork" if cfg.workers and sys.platform.startswith("linux") else None,
    }
    kw: dict[str, Any] = {"seed": cfg.seed, "decode_size": cfg.decode_side, "min_time": cfg.min_time,
                          "num_candidates": cfg.num_candidates, "hflip": hflip}
    if isinstance(data, ShardSet):
        slots = ctx.world_size * max(1, cfg.workers)
        if len(data.urls) < slots:
            raise UsageError(f"{len(data.urls)} shard(s) cannot feed {ctx.world_size} process(es) x {max(1, cfg.workers)} "
                             "loader worker(s), one stream each; use fewer --workers or more shards")
        streams = resume.get("streams") or {}
        if streams and len(streams) != slots:
            epoch = min(int(v[0]) for v in streams.values())
            if ctx.is_main:
                warnings.warn(f"the run was saved with {len(streams)} shard streams (processes x workers), resumed "
                              f"with {slots}: every stream restarts epoch {epoch} at its first shard (samples of "
                              "this epoch already seen are seen again)", stacklevel=2)
            streams = {str(s): [epoch, 0] for s in range(slots)}
        ds = ShardClips(data, tokenizer, cfg.window, rank=ctx.rank, world=ctx.world_size, resume=streams, **kw)
        loader = torch.utils.data.DataLoader(ds, batch_size=local, **common)
        return loader, f"{len(data.urls)} shard(s) streamed ({slots} stream(s))"
    dataset = TrainClips(data, tokenizer, cfg.window, **kw)
    sampler = StepBatchSampler(start, cfg.steps, local, cfg.grad_accum, ctx.rank, ctx.world_size)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, **common)
    return loader, f"{plural(len(data.videos), 'video')} ({len(dataset)} samples/epoch)"


def note_position(positions: dict[str, Any], info: dict[str, Any]) -> None:
    """Remember where the stream of this batch stands (shards only)."""
    if "slot" in info:
        positions[str(int(info["slot"][-1]))] = [int(info["epoch"][-1]), int(info["pos"][-1])]


def gather_positions(ctx: DistContext, positions: dict[str, Any]) -> dict[str, Any]:
    """Every process's stream positions (a collective: every rank calls it)."""
    if not ctx.distributed:
        return dict(positions)
    parts: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(parts, positions)
    merged: dict[str, Any] = {}
    for p in parts:
        merged.update(p or {})
    return merged


def find_data(data: str, val: str | None) -> tuple[DataSplit | Any, DataSplit | None, dict]:
    """Training data (a ``DataSplit``, or a ``ShardSet`` of tar shards), the held-out split (or
    None) and the folder's ``dataset.json`` (or {}). A folder whose ``dataset.json`` names
    ``"shards"`` (as ``make-synthetic --format wds`` writes) trains on those shards."""
    root = Path(data)
    meta: dict = {}
    if root.is_dir():
        if (root / "dataset.json").is_file():
            try:
                meta = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise UsageError(f"{root / 'dataset.json'}: not valid JSON ({exc})") from None
            if not isinstance(meta, dict):
                raise UsageError(f"{root / 'dataset.json'}: expected a JSON object")
        if val is None and (root / "val.csv").is_file():
            val = str(root / "val.csv")
        if isinstance(meta.get("shards"), str):
            return shard_set(meta["shards"], str(root)), (load_split(val) if val else None), meta
        for name in ("train.csv", "videos.csv"):
            if (root / name).is_file():
                train_csv = root / name
                break
        else:
            raise UsageError(f"{root}: no train.csv (or videos.csv) in the data folder")
    elif root.is_file() and not data.endswith(".tar"):
        train_csv = root
    elif is_shard_spec(data):
        return shard_set(data), (load_split(val) if val else None), meta
    else:
        raise UsageError(f"training data not found: {root}")
    return load_split(train_csv), (load_split(val) if val else None), meta
