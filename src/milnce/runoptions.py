"""How a run uses the machine: ``RunOptions`` (batch size, decoding workers, decoder threads,
device), resolved once and passed down to ``run_jobs``, ``build_index``, ``extract`` and ``eval``.

``resolve_run_options`` is the one place these values get their defaults and checks, in this
order: the command line, then a config file, then the environment (``torchrun``'s
``LOCAL_RANK``: a plain ``cuda`` is this process's GPU; ``LOCAL_WORLD_SIZE``: ranks on one
machine share its cores), then the defaults (``windows.DEFAULT_BATCH_CPU`` /
``DEFAULT_BATCH_CUDA`` windows per model call; decoding processes: the cores available minus
one; one decoder thread per process). ``check_device`` is the one check of a device name.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import UsageError
from .windows import DEFAULT_BATCH_CPU, DEFAULT_BATCH_CUDA

__all__ = ["RunOptions", "resolve_run_options", "check_device", "default_workers", "resolve_batch_size",
           "resolve_workers", "MAX_BATCH", "MAX_WORKERS"]

MAX_BATCH = 65_536  # a batch's uint8 ring is allocated up front: beyond this it cannot fit any machine
MAX_WORKERS = 4096
FIELDS = ("batch_size", "workers", "decode_threads", "device")


def default_workers(env: Mapping[str, str] | None = None) -> int:
    """Decoding processes by default: the cores this process may use, minus one for the main. With
    ``env`` (the environment) holding ``torchrun``'s ``LOCAL_WORLD_SIZE`` > 1, the ranks of this
    machine share its cores: each gets cores / ranks, minus one."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    local = (env or {}).get("LOCAL_WORLD_SIZE")
    if local and local.isdigit() and int(local) > 1:
        return max(1, cores // int(local) - 1)
    return max(1, cores - 1)


def resolve_batch_size(batch_size: int | None, device: torch.device | str, *, name: str = "batch size") -> int:
    """The one check and default of ``batch_size`` (windows per model call): ``DEFAULT_BATCH_CUDA`` on
    CUDA, else ``DEFAULT_BATCH_CPU``. ``name``: what the refusal calls it (``--batch-size`` for a CLI)."""
    if batch_size is None:
        return DEFAULT_BATCH_CUDA if torch.device(device).type == "cuda" else DEFAULT_BATCH_CPU
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= MAX_BATCH:
        raise UsageError(f"{name} must be a whole number in [1, {MAX_BATCH}], got {batch_size!r}")
    return batch_size


def resolve_workers(workers: int | None, env: Mapping[str, str] | None = None, *, name: str = "workers") -> int:
    """The one check and default of ``workers`` (decoding processes; 0 = a thread). ``name``: what
    the refusal calls it (``--workers`` for a CLI)."""
    if workers is None:
        return default_workers(env)
    if isinstance(workers, bool) or not isinstance(workers, int) or not 0 <= workers <= MAX_WORKERS:
        raise UsageError(f"{name} must be a whole number in [0, {MAX_WORKERS}], got {workers!r}")
    return workers


def check_device(device: str | torch.device, local_rank: int | None = None) -> torch.device:
    """``device`` as a ``torch.device`` this machine can run the model on, else ``UsageError``
    (a malformed name, ``meta``, CUDA where there is none, a GPU index past the last one): the one
    place a ``--device`` is checked (model loading, ``extract``/``embed-video``, ``train``).
    ``local_rank`` (a ``torchrun`` process's) turns a plain ``cuda`` into ``cuda:LOCAL_RANK``."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise UsageError(f"device {str(device)!r} is not a device name (e.g. cpu, cuda, cuda:1)") from exc
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda" and dev.index is None and local_rank is not None:
        dev = torch.device("cuda", int(local_rank))
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UsageError(f"device {str(device)!r}: CUDA is not available on this machine (use --device cpu)")
        if dev.index is not None and dev.index >= count:
            raise UsageError(f"device {str(device)!r}: this machine has {count} GPU(s), cuda:0 to cuda:{count - 1}")
        return dev
    if dev.type == "mps" and torch.backends.mps.is_available():
        return dev
    raise UsageError(f"device {str(device)!r}: the model runs on cpu or cuda, not on {dev.type}")


def local_rank_of(env: Mapping[str, str] | None) -> int | None:
    """``torchrun``'s ``LOCAL_RANK`` in ``env`` (``None``: not under torchrun, or not a number)."""
    value = (env or {}).get("LOCAL_RANK")
    return int(value) if value is not None and value.strip().isdigit() else None


@dataclass(frozen=True)
class RunOptions:
    """Resolved run options (``resolve_run_options``): ``batch_size`` windows per model call,
    ``workers`` decoding processes (0 = a thread of this process), ``decode_threads`` decoder
    threads per video (``None``: 1 with workers, automatic without; 0: automatic), ``device`` the torch device
    name the model runs on. Values are checked when the object is made (``UsageError``)."""

    batch_size: int = DEFAULT_BATCH_CPU
    workers: int = field(default_factory=default_workers)
    decode_threads: int | None = None
    device: str = "cpu"

    def __post_init__(self) -> None:
        resolve_batch_size(self.batch_size, "cpu")
        resolve_workers(self.workers)
        t = self.decode_threads
        if t is not None and (isinstance(t, bool) or not isinstance(t, int) or not 0 <= t <= MAX_WORKERS):
            raise UsageError(f"decode threads must be a whole number in [0, {MAX_WORKERS}], got {t!r}")
        if not isinstance(self.device, str) or not self.device:
            raise UsageError(f"device must be a device name, got {self.device!r}")

    @property
    def threads(self) -> int:
        """Decoder threads per video as the pipeline runs them (1 with workers, 0 = automatic)."""
        return int(self.decode_threads if self.decode_threads is not None else (1 if self.workers else 0))


def _first(name: str, layers: tuple[Mapping[str, Any] | None, ...]) -> Any:
    for layer in layers:
        if layer is not None and layer.get(name) is not None:
            return layer[name]
    return None


def resolve_run_options(cli: Mapping[str, Any] | None = None, config: Mapping[str, Any] | None = None,
                        env: Mapping[str, str] | None = None, *, device: str | torch.device | None = None,
                        check: bool = False, default_device: str = "cpu",
                        names: Mapping[str, str] | None = None) -> RunOptions:
    """The ``RunOptions`` of a run, each value from the first of: ``cli`` (the command line's
    ``batch_size``/``workers``/``decode_threads``/``device``; ``None`` = not given), ``config`` (a
    config file's), ``env`` (the environment, e.g. ``os.environ``: ``LOCAL_RANK`` makes a plain
    ``cuda`` this rank's GPU, ``LOCAL_WORLD_SIZE`` shares the cores between ranks), the defaults.
    ``device``: the device the model is already on (a loaded model's: it sets the batch default
    and wins over the layers). The device default is ``default_device`` (``"cpu"``; ``"auto"``:
    ``cuda:LOCAL_RANK`` when CUDA is available, else the CPU, as ``milnce train`` does). ``check``:
    the device name is checked on this machine (``check_device``; ``UsageError``). Bad values
    raise ``UsageError`` before anything runs; ``names`` (field -> name, e.g. ``--batch-size``):
    what a refusal calls a field."""
    layers = (cli, config)
    unknown = sorted({k for layer in layers if layer for k in layer} - set(FIELDS))
    if unknown:
        raise UsageError(f"unknown run option(s): {', '.join(unknown)} (known: {', '.join(FIELDS)})")
    rank = local_rank_of(env)
    if device is not None:
        dev = str(torch.device(device))
    else:
        given = _first("device", layers)
        if given is None and default_device == "auto":
            dev = str(torch.device("cuda", rank or 0)) if torch.cuda.is_available() else "cpu"
        elif check:
            dev = str(check_device(given if given is not None else default_device, rank))
        else:
            dev = str(given if given is not None else default_device)
            if rank is not None and dev == "cuda":
                dev = f"cuda:{rank}"
    named = names or {}
    batch = resolve_batch_size(_first("batch_size", layers), dev if _is_device(dev) else "cpu",
                               name=named.get("batch_size", "batch size"))
    workers = resolve_workers(_first("workers", layers), env, name=named.get("workers", "workers"))
    return RunOptions(batch_size=batch, workers=workers, decode_threads=_first("decode_threads", layers), device=dev)


def _is_device(name: str) -> bool:
    try:
        torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        return False
    return True
