"""One optimiser step's forward and backward passes: plain, or with gradient caching.

Gradient caching (``--micro-batch M``) gives an optimiser step over a global batch of B clips
whose MIL-NCE negatives are the whole global batch while activations are held for M clips at a
time: pass 1 embeds every micro-batch without gradients; the loss and its gradient with respect
to the embeddings are computed on the gathered global batch; pass 2 re-runs each micro-batch with
gradients and back-propagates the cached embedding gradients.

BatchNorm: in train mode each micro-batch is normalised with its own statistics in both passes
(identical, since the inputs and weights are identical), so a step is exactly the step of a
``torchrun`` job of B/M processes of M clips each (without SyncBN). Running statistics are
updated once per micro-batch, in pass 1 (pass 2 restores them), folding in every micro-batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from ..errors import TrainingError
from .dist import all_gather_with_grad
from .loss import milnce_loss

__all__ = ["plain_step", "cached_step", "bn_buffers", "check_finite", "set_train_mode"]


def _prep(clips: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return clips.to(dtype).div_(255)


def plain_step(model: nn.Module, clips: torch.Tensor, ids: torch.Tensor, *, dtype: torch.dtype,
               autocast: Callable[[], Any], scaler: Any, scale: float, sync: bool) -> float:
    """Forward, MIL-NCE over the gathered batch, backward of ``loss * scale``; returns the loss."""
    with (contextlib.nullcontext() if sync else model.no_sync()):  # type: ignore[operator]
        with autocast():
            v, t = model(_prep(clips, dtype), ids.reshape(-1, ids.shape[-1]))
        loss = milnce_loss(all_gather_with_grad(v.to(dtype)), all_gather_with_grad(t.to(dtype)))
        scaler.scale(loss * scale).backward()
    return float(loss.detach())


def bn_buffers(net: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """The running statistics (and counters) of every batch-norm layer."""
    for name, m in net.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            for bname, b in m.named_buffers(recurse=False):
                if b is not None:
                    yield (f"{name}.{bname}" if name else bname), b


def cached_step(model: nn.Module, inner: nn.Module, clips: torch.Tensor, ids: torch.Tensor, micro: int, *,
                dtype: torch.dtype, autocast: Callable[[], Any], scaler: Any, distributed: bool) -> float:
    """A gradient-cached forward/backward of this process's ``clips`` (uint8, kept for pass 2) in
    micro-batches of ``micro``; ``model`` may be DDP-wrapped, ``inner`` is the bare module."""
    n, k = clips.shape[0], ids.shape[1]
    ids = ids.reshape(-1, ids.shape[-1])
    starts = range(0, n, micro)
    vs, ts = [], []
    with torch.no_grad():  # pass 1: embeddings only; BN running statistics updated once per micro-batch
        for a in starts:
            with autocast():
                v, t = inner(_prep(clips[a:a + micro], dtype), ids[a * k:(a + micro) * k])
            vs.append(v.to(dtype))
            ts.append(t.to(dtype))
    v_all = torch.cat(vs).requires_grad_()
    t_all = torch.cat(ts).requires_grad_()
    loss = milnce_loss(all_gather_with_grad(v_all), all_gather_with_grad(t_all))
    scaler.scale(loss).backward()
    gv, gt = v_all.grad, t_all.grad
    assert gv is not None and gt is not None
    saved = [(b, b.detach().clone()) for _, b in bn_buffers(inner)]
    try:  # pass 2: the same micro-batches with gradients, fed the cached embedding gradients
        for i, a in enumerate(starts):
            last = i == len(starts) - 1
            with (contextlib.nullcontext() if last or not distributed else model.no_sync()):  # type: ignore[operator]
                with autocast():
                    v, t = model(_prep(clips[a:a + micro], dtype), ids[a * k:(a + micro) * k])
                torch.autograd.backward([v.to(dtype), t.to(dtype)],
                                        [gv[a:a + micro], gt[a * k:(a + micro) * k]])
    finally:
        with torch.no_grad():
            for b, old in saved:
                b.copy_(old)
    return float(loss.detach())


def check_finite(net: nn.Module, step: int, all_ok: Callable[[bool], bool] = bool) -> None:
    """Raise ``TrainingError`` naming the first weight or BN statistic that is NaN or infinite.
    ``all_ok`` makes the decision collective (``DistContext.all_ok``): every rank raises together."""
    tensors = [(n, p) for n, p in net.named_parameters()] + [
        (n, b) for n, b in bn_buffers(net) if b.is_floating_point()]
    with torch.no_grad():
        sums = torch.stack([t.detach().abs().sum().float() for _, t in tensors])
        local = bool(torch.isfinite(sums).all()) or all(bool(torch.isfinite(t).all()) for _, t in tensors)
    if all_ok(local):
        return
    for name, t in tensors:
        if not bool(torch.isfinite(t).all()):
            what = "batch-norm running statistic" if name.endswith(("running_mean", "running_var")) else "weight"
            raise TrainingError(f"the {what} {name} became NaN or infinite at step {step}: the run diverged; "
                                "lower --lr (or --head-lr-mult), or use --grad-clip")
    raise TrainingError(f"a weight or batch-norm statistic became NaN or infinite on another process at step {step}")


def set_train_mode(net: nn.Module, freeze_bn: bool) -> None:
    """Train mode; with ``freeze_bn`` every batch-norm layer stays in eval mode (running statistics)."""
    net.train()
    if freeze_bn:
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
