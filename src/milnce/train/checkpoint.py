"""Training checkpoints: atomic, pickle-free (``torch.load(weights_only=True)``), exact-resume.

A run folder ``RUN`` holds ``checkpoints/step_00000100.pt`` ...; each file is a dict of tensors,
numbers, strings, lists and dicts only: ``state_dict`` (the plain S3D keys, so
``milnce.load_model(RUN)`` reads it), ``optimizer``, ``scheduler``, ``scaler``, ``rng`` (every
random generator state as tensors), ``step``/``samples`` (the data position) and ``config``.
Files are written to a hidden temporary name, fsynced, then renamed, so a reader (or a run killed
at any moment) only ever sees complete checkpoints.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import atomic_file, fsync_dir
from ..errors import TrainingError
from ..integrity import zip_problem
from ..weights import CheckpointError, find_run_checkpoint

__all__ = ["save_checkpoint", "load_training_checkpoint", "latest_checkpoint", "rng_state", "set_rng_state",
           "checkpoint_path", "FORMAT"]

FORMAT = "milnce-train-checkpoint"
_NAME = re.compile(r"step_(\d+)\.pt")


def checkpoint_path(run: str | os.PathLike[str], step: int) -> Path:
    return Path(run) / "checkpoints" / f"step_{step:08d}.pt"


def latest_checkpoint(run: str | os.PathLike[str]) -> Path | None:
    """The newest complete checkpoint of ``run``, or None."""
    try:
        return find_run_checkpoint(run)
    except CheckpointError:
        return None


def rng_state(device: torch.device | None = None) -> dict[str, torch.Tensor]:
    """Every global random generator state, as tensors."""
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": torch.tensor([version, *mt], dtype=torch.int64),
        "python_gauss": torch.tensor([float("nan") if gauss is None else gauss], dtype=torch.float64),
        "numpy": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        "numpy_extra": torch.tensor([pos, has_gauss, cached], dtype=torch.float64),
    }
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, torch.Tensor], device: torch.device | None = None) -> None:
    """Restore what ``rng_state`` saved."""
    torch.set_rng_state(state["torch"])
    py = state["python"].tolist()
    gauss = float(state["python_gauss"][0])
    random.setstate((int(py[0]), tuple(int(x) for x in py[1:]), None if gauss != gauss else gauss))
    pos, has_gauss, cached = state["numpy_extra"].tolist()
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    if device is not None and device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def save_checkpoint(run: str | os.PathLike[str], step: int, payload: dict[str, Any], keep: int = 3) -> Path:
    """Write ``payload`` as the checkpoint of ``step`` atomically; keep the newest ``keep``."""
    final = checkpoint_path(run, step)
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_file(final) as f:
            torch.save({"format": FORMAT, **payload}, f)
    except (OSError, RuntimeError) as exc:  # a full disk (torch's writer may wrap the OSError)
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).splitlines()[0][:200]
        raise TrainingError(f"cannot write the checkpoint {final}: {reason}") from None
    fsync_dir(final.parent)
    found = sorted((int(m.group(1)), p) for p in final.parent.iterdir() if (m := _NAME.fullmatch(p.name)))
    for _, old in found[:-keep]:
        old.unlink(missing_ok=True)
    for stale in final.parent.glob(".step_*.pt.*tmp"):  # left by a killed run (one trainer per run folder)
        stale.unlink(missing_ok=True)
    return final


def load_training_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a training checkpoint without unpickling code, after checking every zip member's
    CRC-32 (a flipped byte must not be trained on); ``CheckpointError`` for a damaged, empty or
    foreign file."""
    try:
        size = os.path.getsize(path)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read the training checkpoint ({exc.strerror})") from None
    if size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes); delete it to resume from the one before")
    damage = zip_problem(os.fspath(path))
    if damage:
        raise CheckpointError(f"{path}: damaged training checkpoint ({damage}); delete it to resume from the one before")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or foreign file
        raise CheckpointError(f"{path}: cannot read the training checkpoint ({str(exc).splitlines()[0][:200]})") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a milnce training checkpoint")
    step = obj.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise CheckpointError(f"{path}: step must be a whole number >= 0, got {step!r}")
    for key in ("state_dict", "optimizer", "rng"):
        if not isinstance(obj.get(key), dict):
            raise CheckpointError(f"{path}: the training checkpoint has no {key}")
    return obj
