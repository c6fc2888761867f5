"""Training settings: one typed dataclass, read from YAML/JSON and the command line, saved in the run."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, fields, replace
from functools import cached_property
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_bytes
from ..errors import UsageError
from ..windows import WindowSettings

__all__ = ["TrainConfig", "load_config_file", "RESUME_MAY_CHANGE", "RESUME_MAY_REPLAN", "PRECISIONS"]

PRECISIONS = ("fp32", "bf16", "fp16", "fp64")  # fp64: exact-arithmetic checks on the CPU
# Settings that a resumed run may change without breaking exact resume.
RESUME_MAY_CHANGE = frozenset({"steps", "eval_every", "save_every", "keep_checkpoints", "log_every", "workers",
                               "progress", "device", "eval_max", "threads", "bad_fraction", "bad_window"})
# Settings that a resumed run may change although the run then differs from an uninterrupted one
# (said in the log and recorded in metrics.jsonl): the cosine horizon, to extend a run.
RESUME_MAY_REPLAN = frozenset({"schedule_steps"})


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (the command line and ``--config`` fill it in)."""

    data: str = ""
    val: str | None = None  # held-out pairs; default: DATA/val.csv when present
    vocab: str | None = None  # default: DATA/vocab.npy, or the --weights checkpoint's vocabulary
    init: str | None = None  # fine-tune from any checkpoint load_model accepts (or a run folder)
    word2vec: str | None = None  # V x 300 .npy/.pth word vectors for the word embedding
    freeze_word_embd: bool = True
    space_to_depth: bool | None = None  # default: the --weights checkpoint's variant, else True
    # clips
    fps: float = 10.0
    num_frames: int = 32
    size: int = 224
    decode_size: int | None = None  # frames are decoded at this size, then randomly cropped to size
    min_time: float = 5.0
    num_candidates: int = 4
    hflip: bool | None = None  # default: true unless DATA/dataset.json says "hflip": false
    # optimisation
    batch_size: int = 16  # clips per optimiser step, over all processes and accumulation steps
    grad_accum: int = 1
    micro_batch: int | None = None  # gradient caching: clips per forward pass (negatives: the whole batch)
    freeze_bn: bool = False  # BatchNorm in eval mode (running statistics, no batch statistics)
    steps: int = 1000
    schedule_steps: int | None = None  # cosine horizon; default: steps of the first launch
    lr: float = 1e-3
    head_lr_mult: float = 1.0  # lr factor of the projection heads (video fc, text fc1/fc2)
    adam_eps: float = 1e-8
    min_lr: float = 0.0
    warmup_steps: int = 100
    weight_decay: float = 0.0
    grad_clip: float | None = None
    precision: str = "fp32"
    sync_bn: bool = False
    seed: int = 0
    # bookkeeping
    workers: int = 2
    eval_every: int = 100
    eval_max: int = 512
    save_every: int = 100
    keep_checkpoints: int = 3
    log_every: int = 10
    device: str | None = None
    threads: int | None = None  # torch CPU threads of each process (default: torch's choice)
    progress: bool = True
    bad_fraction: float = 0.1  # stop when more than this fraction of a window's samples is unreadable
    bad_window: int = 50  # ... over this many steps

    # ---- derived values
    @cached_property
    def window(self) -> WindowSettings:
        """The clips' windows (``fps``, ``num_frames``, ``size``): one object per config, built on first
        use and handed to the data loaders and the held-out evaluation as it is."""
        return WindowSettings(fps=self.fps, num_frames=self.num_frames, size=self.size)

    @property
    def decode_side(self) -> int:
        if self.decode_size is not None:
            return self.decode_size
        return max(self.size, int(round(self.size * 8 / 7 / 2)) * 2)

    @property
    def horizon(self) -> int:
        return self.schedule_steps if self.schedule_steps is not None else self.steps

    def validate(self) -> TrainConfig:
        """Raise ``UsageError`` for any value out of range."""
        if not self.data:
            raise UsageError("no training data: pass --data DIR (or a CSV)")
        _ = self.window  # validates fps / num_frames / size
        ints = {"num_candidates": 1, "batch_size": 1, "grad_accum": 1, "steps": 0, "warmup_steps": 0,
                "workers": 0, "eval_every": 0, "eval_max": 1, "save_every": 0, "keep_checkpoints": 1,
                "log_every": 1, "seed": 0, "bad_window": 1}
        for name, lo in ints.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise UsageError(f"{name} must be a whole number >= {lo}, got {v!r}")
        for name in ("schedule_steps", "decode_size", "threads", "micro_batch"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise UsageError(f"{name} must be a whole number >= 1, got {v!r}")
        if self.decode_size is not None and self.decode_size < self.size:
            raise UsageError(f"decode_size ({self.decode_size}) must be >= size ({self.size})")
        for name in ("lr", "min_lr", "weight_decay", "min_time", "head_lr_mult", "adam_eps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise UsageError(f"{name} must be a finite number >= 0, got {v!r}")
        if self.grad_clip is not None and not (isinstance(self.grad_clip, (int, float)) and self.grad_clip > 0):
            raise UsageError(f"grad_clip must be > 0, got {self.grad_clip!r}")
        if self.precision not in PRECISIONS:
            raise UsageError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if not (isinstance(self.bad_fraction, (int, float)) and not isinstance(self.bad_fraction, bool)
                and 0 <= self.bad_fraction <= 1):
            raise UsageError(f"bad_fraction must be a number in [0, 1], got {self.bad_fraction!r}")
        if self.micro_batch is not None and self.grad_accum != 1:
            raise UsageError("--micro-batch and --grad-accum cannot be combined: --micro-batch already bounds "
                             "the memory, with the whole batch as negatives (use it alone)")
        if self.batch_size % self.grad_accum:
            raise UsageError(f"batch_size ({self.batch_size}) must be a multiple of grad_accum ({self.grad_accum})")
        for name in ("freeze_word_embd", "sync_bn", "progress", "freeze_bn"):
            if not isinstance(getattr(self, name), bool):
                raise UsageError(f"{name} must be true or false, got {getattr(self, name)!r}")
        return self

    def process_batch(self, world_size: int) -> int:
        """Clips each process loads per micro-step (with ``micro_batch``: per optimiser step)."""
        per_step = self.batch_size // self.grad_accum
        if per_step % world_size:
            raise UsageError(
                f"batch_size / grad_accum = {per_step} clips per micro-step cannot be split over "
                f"{world_size} processes; use a multiple of {world_size}"
            )
        local = per_step // world_size
        if self.micro_batch is not None and local % self.micro_batch:
            raise UsageError(f"--micro-batch {self.micro_batch} must divide the {local} clips of each process "
                             f"(batch_size {self.batch_size} over {world_size} process(es))")
        return local

    def forward_batch(self, world_size: int) -> int:
        """Clips per forward pass (what BatchNorm normalises together on one process)."""
        return self.micro_batch if self.micro_batch is not None else self.process_batch(world_size)

    def with_(self, **changes: Any) -> TrainConfig:
        kept = {k: v for k, v in changes.items() if v is not None}
        return replace(self, **kept) if kept else self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> TrainConfig:
        names = {f.name for f in fields(cls)}
        clean: dict[str, Any] = {}
        for key, value in d.items():
            k = str(key).replace("-", "_")
            if k not in names:
                raise UsageError(f"{source}: unknown setting {key!r} (known: {', '.join(sorted(names))})")
            clean[k] = value
        for k in ("fps", "lr", "min_lr", "weight_decay", "min_time", "grad_clip", "head_lr_mult", "adam_eps",
                  "bad_fraction"):
            if isinstance(clean.get(k), int) and not isinstance(clean.get(k), bool):
                clean[k] = float(clean[k])
        return cls(**clean)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the resolved settings as JSON (atomically)."""
        atomic_write_bytes(path, (json.dumps(self.to_dict(), indent=2) + "\n").encode())


def load_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Settings from a YAML (``.yaml``/``.yml``, needs pyyaml) or JSON file, as a dict."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UsageError(f"config file not found: {path}")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: not a UTF-8 text file ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the config file ({exc.strerror})") from None
    if path.endswith(".json"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{path}: not valid JSON ({exc})") from None
    else:
        try:
            import yaml
        except ImportError:
            raise UsageError(f"{path}: reading YAML needs pyyaml (pip install 'milnce[train]'), or give a .json file") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise UsageError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    return data
