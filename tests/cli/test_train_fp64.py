"""--precision fp64 is float64 end to end: a gradient-cached single process (--micro-batch 4 of 8)
and a 2-process torchrun job (gloo, CPU) of 4 clips each take the same 3 steps to <= 1e-10 relative."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli import test_train as test_train
from tests.cli.test_train import _env, _final, _settings, _train
from tests.cli.test_train_scale import _assert_close_state

synth = test_train.synth  # the module-scoped synthetic data set

pytest.importorskip("webdataset")


@pytest.mark.slow
def test_micro_batch_and_torchrun_agree_in_float64(synth, tmp_path):
    # lr 1 and three steps: any float32 rounding on one path (1e-7) would show far above 1e-10;
    # the same thread count on both sides (torchrun sets OMP_NUM_THREADS=1 per process)
    cfg = _settings(tmp_path, batch_size=8, lr=1.0, adam_eps=1.0, warmup_steps=0, precision="fp64",
                    save_every=3, threads=1)
    one, two = tmp_path / "cached", tmp_path / "ddp"
    assert _train(synth, one, cfg, "--steps", "3", "--micro-batch", "4") == 0
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    exe = Path(sys.executable).parent / "milnce"
    launcher += ["--no-python", str(exe)] if exe.exists() else ["-m", "milnce.cli"]
    res = subprocess.run([*launcher, "train", "--data", str(synth), "--out", str(two), "--config", str(cfg),
                          "--steps", "3"], env=_env(), capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stderr[-3000:]
    a, b = _final(one), _final(two)
    assert a["world_size"] == 1 and b["world_size"] == 2
    assert all(v.dtype.is_floating_point is False or str(v.dtype) == "torch.float64"
               for k, v in a["state_dict"].items() if "num_batches" not in k)
    # BN running statistics differ by design (DDP keeps rank 0's; the cached step folds in both)
    _assert_close_state(a, b, rel=1e-10, buffers=False)


AUDIT = Path(__file__).resolve().parents[1] / "fp64_audit.py"


def _narrow_ops(stdout: str) -> list[dict]:
    import json

    return [json.loads(x) for x in stdout.splitlines() if x.startswith("{")]


@pytest.mark.slow
def test_the_gradient_cached_step_has_no_float32_operation():
    """Every operation of an fp64 gradient-cached step of the real S3D (embeddings, loss, cached
    gradients, pass 2) takes and gives float64 tensors: no float32 constant, buffer or cast."""
    res = subprocess.run([sys.executable, str(AUDIT)], env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert _narrow_ops(res.stdout) == [{"rank": 0, "narrow_ops": {}}]


@pytest.mark.slow
def test_the_distributed_steps_have_no_float32_operation(tmp_path):
    """The same under torchrun (2 processes, gloo): the DDP step with the all-gathered loss and
    the gradient-cached step across processes (each rank writes its own file)."""
    env = {**_env(), "MILNCE_AUDIT_OUT": str(tmp_path)}
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(AUDIT)], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    found = "".join((tmp_path / f"rank{r}.json").read_text() for r in (0, 1))
    assert sorted(_narrow_ops(found), key=lambda r: r["rank"]) == [
        {"rank": 0, "narrow_ops": {}}, {"rank": 1, "narrow_ops": {}}]
