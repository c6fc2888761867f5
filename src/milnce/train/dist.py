"""Distributed helpers: the process group from ``torchrun``, an autograd-correct all-gather,
and a SyncBatchNorm that also runs on CPU (gloo).

Every rank computes the loss on the gathered global batch, so all ranks hold the same loss
``L``. ``all_gather_with_grad``'s backward sums the incoming gradients over ranks and returns
this rank's slice: rank ``r`` gets ``W * dL/de_r``, and DDP's gradient averaging (division by
``W``) then yields exactly ``dL/dtheta`` of one process training on the global batch.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ..runoptions import resolve_run_options

__all__ = ["DistContext", "init_distributed", "distributed", "all_gather_with_grad", "all_reduce_with_grad",
           "SyncBatchNorm3d", "convert_sync_batchnorm"]


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: ``rank`` of ``world_size``, its device, whether a group is up."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    distributed: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_ok(self, ok: bool) -> bool:
        """Whether ``ok`` holds on every process (a collective: every rank calls it), so that a
        rank that must stop does not leave the others waiting in the next collective."""
        if not self.distributed:
            return ok
        dev = self.device if dist.get_backend() == "nccl" else torch.device("cpu")
        flag = torch.tensor([1 if ok else 0], dtype=torch.int32, device=dev)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())


def init_distributed(device: str | None = None) -> DistContext:
    """Join the process group described by ``torchrun``'s environment (``WORLD_SIZE``, ``RANK``,
    ``LOCAL_RANK``); a single process otherwise. The device is ``cuda:LOCAL_RANK`` when CUDA is
    available (backend nccl), else the CPU (backend gloo), unless ``device`` is given."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    # the one device resolution (milnce.runoptions): UsageError (one line) for CUDA where there is none
    run = resolve_run_options({"device": device or None}, env={"LOCAL_RANK": str(local)}, check=True,
                              default_device="auto")
    dev = torch.device(run.device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1:
        if not dist.is_initialized():
            backend = "nccl" if dev.type == "cuda" else "gloo"
            kwargs: dict[str, object] = {"device_id": dev} if dev.type == "cuda" else {}
            dist.init_process_group(backend, **kwargs)  # type: ignore[arg-type]
        return DistContext(rank, world, local, dev, True)
    return DistContext(0, 1, 0, dev, False)


@contextlib.contextmanager
def distributed(device: str | None = None) -> Iterator[DistContext]:
    """``init_distributed`` for the length of a ``with`` block: a process group (``torchrun``) is
    destroyed at its end, however the block ends."""
    ctx = init_distributed(device)
    try:
        yield ctx
    finally:
        if ctx.distributed:
            dist.destroy_process_group()


class _AllGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        world = dist.get_world_size()
        ctx.rank, ctx.n = dist.get_rank(), x.shape[0]
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n]


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (same shape on every rank) over ranks in rank order, keeping gradients
    (see the module docstring); ``x`` itself when not distributed."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    return _AllGather.apply(x)


class _AllReduce(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


def all_reduce_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Sum of ``x`` over ranks; its gradient is the sum of the ranks' gradients."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    return _AllReduce.apply(x)


class SyncBatchNorm3d(nn.BatchNorm3d):
    """BatchNorm3d whose training statistics cover the whole distributed batch, on any device.

    (``torch.nn.SyncBatchNorm`` refuses CPU tensors; this one all-reduces per-channel sums with
    ``all_reduce_with_grad``, so it also runs under gloo.) Outside a process group it is a plain
    BatchNorm3d. Same parameter and buffer names, so state dicts are unchanged.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        dims = [0, 2, 3, 4]
        xf = x if x.dtype == torch.float64 else x.float()
        count = torch.full((1,), xf.numel() / xf.shape[1], dtype=torch.float64, device=x.device)
        # sums in float64: E[x^2] - E[x]^2 then loses nothing that float32 BatchNorm keeps
        sums = torch.cat((xf.sum(dims, dtype=torch.float64), (xf * xf).sum(dims, dtype=torch.float64), count))
        stats = all_reduce_with_grad(sums)
        c = x.shape[1]
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c:2 * c] / n - mean * mean).clamp_min(0)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)  # type: ignore[union-attr]
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)  # type: ignore[arg-type]
                self.running_mean.mul_(1 - m).add_(mean.detach().to(self.running_mean.dtype), alpha=m)
                self.running_var.mul_(1 - m).add_((var.detach() * (n / (n - 1).clamp_min(1))).to(self.running_var.dtype), alpha=m)
        shape = (1, c, 1, 1, 1)
        mean, var = mean.to(xf.dtype), var.to(xf.dtype)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Replace every BatchNorm3d by a synchronised one: ``torch.nn.SyncBatchNorm`` on CUDA,
    ``SyncBatchNorm3d`` elsewhere (both keep the state-dict names)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _convert(module)


def _convert(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.BatchNorm3d) and not isinstance(module, SyncBatchNorm3d):
        new = SyncBatchNorm3d(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        return new.to(next(iter(module.state_dict().values())).device)
    for name, child in module.named_children():
        setattr(module, name, _convert(child))
    return module
