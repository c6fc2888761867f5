"""``milnce.train.step``: One optimiser step's forward and backward passes."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from eval_fixtures import AUDIT, narrow_ops, run_train, subprocess_env, tiny_config

pytest.importorskip("webdataset")


@pytest.mark.slow
def test_the_gradient_cached_step_has_no_float32_operation():
    """Every operation of an fp64 gradient-cached step of the real S3D (embeddings, loss, cached
    gradients, pass 2) takes and gives float64 tensors: no float32 constant, buffer or cast."""
    res = subprocess.run([sys.executable, str(AUDIT)], env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert narrow_ops(res.stdout) == [{"rank": 0, "narrow_ops": {}}]

# ----------------------------------------------------------------------------- gradient caching

class _Tiny(nn.Module):
    """A two-tower toy with batch-norm, in float64: (video, ids) -> (V, T)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm3d(4)
        self.fc = nn.Linear(4, 5)
        self.words = nn.Embedding(20, 5)

    def forward(self, video: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.relu(self.bn(self.conv(video))).mean(dim=(2, 3, 4))
        return self.fc(x), self.words(ids).mean(dim=1)


def test_cached_step_is_exactly_the_step_of_b_over_m_processes():
    from milnce.train.loss import milnce_loss
    from milnce.train.step import cached_step

    torch.manual_seed(0)
    a = _Tiny().double().train()
    b = _Tiny().double().train()
    b.load_state_dict(a.state_dict())
    clips = torch.randint(0, 256, (6, 3, 2, 4, 4), dtype=torch.uint8)
    ids = torch.randint(1, 20, (6, 2, 3))
    loss = cached_step(a, a, clips, ids, 2, dtype=torch.float64, autocast=_null, scaler=_NoScale(), distributed=False)
    # reference: what a torchrun job of 3 processes x 2 clips computes (each rank's own BN
    # statistics, embeddings gathered, one loss over the global batch), written out plainly
    vs, ts = [], []
    for r in range(3):
        v, t = b(clips[2 * r:2 * r + 2].double() / 255, ids[2 * r:2 * r + 2].reshape(-1, 3))
        vs.append(v)
        ts.append(t)
    ref = milnce_loss(torch.cat(vs), torch.cat(ts))
    ref.backward()
    assert loss == pytest.approx(float(ref.detach()), rel=1e-12)
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-14, msg=name)
    # running statistics: updated once per micro-batch (pass 2 does not fold them in again)
    assert int(a.bn.num_batches_tracked) == 3
    torch.testing.assert_close(a.bn.running_mean, b.bn.running_mean, rtol=1e-12, atol=0)
    torch.testing.assert_close(a.bn.running_var, b.bn.running_var, rtol=1e-12, atol=0)


def _null():
    import contextlib

    return contextlib.nullcontext()


class _NoScale:
    def scale(self, x):
        return x


def test_a_diverged_run_stops_with_a_training_error(synth, tmp_path, capsys):
    cfg = tiny_config(tmp_path, warmup_steps=0, eval_every=1)
    assert run_train(synth, tmp_path / "run", cfg, "--steps", "2", "--lr", "1e6") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("milnce: error:") and "NaN or infinite" in err[-1], err[-3:]
    from milnce.errors import TrainingError
    from milnce.train.step import check_finite

    net = nn.BatchNorm1d(2)
    net.running_var[0] = float("nan")
    with pytest.raises(TrainingError, match="batch-norm running statistic running_var"):
        check_finite(net, 5)
    assert issubclass(TrainingError, RuntimeError)
