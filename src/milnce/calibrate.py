"""Batch-norm calibration: give a randomly initialised (or re-sized) network live statistics.

With default initialisation the S3D tower's activations shrink block after block until
``mixed_5c`` is ~1e-9 and every clip gets the same embedding. Re-estimating each batch-norm
layer's running mean and variance from a few real video clips (a train-mode forward with a
cumulative average, no gradient, no weight change) makes activations O(1) on real video.
Calibrate on real clips, not noise: noise-calibrated statistics leave the network
ill-conditioned on video (reduced-precision results then drift from float32).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

__all__ = ["calibrate_batchnorm"]


@torch.no_grad()
def calibrate_batchnorm(net: nn.Module, batches: Iterable[torch.Tensor], *, video_key: str | None = None) -> nn.Module:
    """Re-estimate every batch-norm layer's running statistics from ``batches`` of clips.

    ``batches``: float ``B x 3 x T x H x W`` tensors in [0, 1] (uint8 is divided by 255). The
    statistics are the cumulative average over all batches (``momentum=None``); weights are not
    touched. Returns ``net`` in eval mode. Raises ``ValueError`` when ``batches`` is empty.
    """
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m, m.momentum) for m in norms]
    was_training = net.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over the calibration batches
    device = next(net.parameters()).device
    seen = 0
    try:
        net.train()
        for x in batches:
            if x.dtype == torch.uint8:
                x = x.float().div_(255)
            net(x.to(device))
            seen += 1
    finally:
        for m, momentum in saved:
            m.momentum = momentum
        net.train(was_training)
    if seen == 0:
        raise ValueError("calibrate_batchnorm needs at least one batch of clips")
    return net.eval()
