"""Batch-norm calibration makes random weights alive on real video."""

from __future__ import annotations

import torch

from conftest import VOCAB, real_clip_batch
from milnce.calibrate import calibrate_batchnorm
from milnce.model import S3D


def test_default_init_vanishes_and_calibration_revives_it():
    torch.manual_seed(0)
    net = S3D(None, 512, num_embeddings=len(VOCAB) + 1).eval()
    x = real_clip_batch(size=64)[:6]  # 64 px: the vanishing and its cure do not depend on the frame size
    with torch.no_grad():
        dead = net(x)["mixed_5c"].abs().mean().item()
    assert dead < 1e-4  # default initialisation: mixed_5c all but vanishes
    weights = {k: v.clone() for k, v in net.state_dict().items() if not k.startswith("bn") and "bn" not in k}
    calibrate_batchnorm(net, x.split(3))
    assert not net.training
    with torch.no_grad():
        out = net(x)
    feats = out["mixed_5c"]
    assert 0.05 < feats.abs().mean().item() < 20  # O(1) activations
    emb = out["video_embedding"]
    scores = emb @ emb.T
    off = scores[~torch.eye(len(x), dtype=torch.bool)]
    assert off.std() > 1e-2 * off.abs().mean()  # different clips, different scores
    # only the statistics changed, never a weight
    for k, v in net.state_dict().items():
        if k in weights:
            assert torch.equal(v, weights[k]), k


def test_calibration_needs_batches():
    import pytest

    net = S3D(None, 512, num_embeddings=4)
    with pytest.raises(ValueError, match="at least one batch"):
        calibrate_batchnorm(net, [])
    assert all(m.momentum == 0.1 for m in net.modules() if isinstance(m, torch.nn.BatchNorm3d))
