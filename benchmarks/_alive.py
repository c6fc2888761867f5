"""Random weights that are alive: batch-norm calibrated on real video (``tests/data/real_clips.mp4``).

Default initialisation makes ``mixed_5c`` vanish and noise-calibrated statistics leave the
network ill-conditioned on video, so benchmarks time and compare paths on real clips with
statistics calibrated on real clips.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from milnce.calibrate import calibrate_batchnorm  # noqa: E402
from milnce.model import S3D  # noqa: E402

REAL_CLIPS = ROOT / "tests" / "data" / "real_clips.mp4"


def real_batch(batch: int, frames: int = 32, size: int = 224, offset: int = 0) -> torch.Tensor:
    """``batch`` windows of real video as float ``B x 3 x T x S x S`` in [0, 1] (cycled if needed)."""
    from milnce.video import clips_to_tensor, read_clips

    stride = max(1, frames // 4)
    clips = [c.frames for c in read_clips(REAL_CLIPS, fps=10, num_frames=frames, size=size, stride=stride)]
    picked = [clips[(offset + i) % len(clips)] for i in range(batch)]
    return clips_to_tensor(picked)


def random_net(seed: int = 0, space_to_depth: bool = True, num_embeddings: int = 2) -> S3D:
    """S3D with He-initialised random weights and batch-norm calibrated on real video."""
    g = torch.Generator().manual_seed(seed)
    net = S3D(None, 512, space_to_depth=space_to_depth, num_embeddings=num_embeddings)
    sd = {}
    for k, v in net.state_dict().items():
        if v.ndim == 5:
            v = torch.randn(v.shape, generator=g) * (2.0 / v[0].numel()) ** 0.5
        elif k.endswith(".bias"):
            v = torch.randn(v.shape, generator=g) * 0.05
        sd[k] = v
    net.load_state_dict(sd)
    x = real_batch(8, 16, 112)
    return calibrate_batchnorm(net, x.split(4))


def agreement(emb: torch.Tensor, ref: torch.Tensor, queries: int = 32, k: int = 10) -> float:
    """Mean top-``k`` overlap of the rankings ``emb`` and ``ref`` give for random query vectors."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(queries, emb.shape[1], generator=g, dtype=torch.float64)
    k = min(k, emb.shape[0])
    a = (q @ emb.double().T).topk(k).indices
    b = (q @ ref.double().T).topk(k).indices
    return sum(len(set(x.tolist()) & set(y.tolist())) for x, y in zip(a, b)) / (queries * k)
