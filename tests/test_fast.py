"""``milnce.fast``: Fast inference path of the S3D video tower."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import milnce
import milnce.atomic
import milnce.fast
from milnce.fast import FastVideoNet
from weights_fixtures import random_net

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- fused cuDNN fallback


class _FakeCuda(torch.Tensor):
    """A CPU tensor that says it is on CUDA, to reach the cuDNN branch of ``_ConvReLU``."""

    @property
    def is_cuda(self) -> bool:  # type: ignore[override]
        return True


def _unit() -> milnce.fast._ConvReLU:
    unit = milnce.fast._ConvReLU(torch.randn(4, 3, 1, 1, 1), torch.zeros(4), (1, 1, 1), (0, 0, 0))
    unit.cudnn_fused = True
    return unit


@pytest.mark.parametrize("error, falls_back", [
    (RuntimeError("cuDNN error: CUDNN_STATUS_NOT_SUPPORTED"), True),
    (NotImplementedError("cudnn_convolution_relu: no kernel for this input"), True),
    (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), False),
    (RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"), False),
    (torch.cuda.OutOfMemoryError("CUDA out of memory"), False),
    (RuntimeError("CUDA error: an illegal memory access was encountered"), False),
])
def test_fused_cudnn_falls_back_only_when_unsupported(monkeypatch, error, falls_back):
    monkeypatch.setattr(milnce.fast, "_HAS_MKLDNN_POINTWISE", False)

    def fused(*args, **kwargs):
        raise error

    monkeypatch.setattr(torch, "cudnn_convolution_relu", fused)
    unit = _unit()
    x = torch.rand(1, 3, 2, 4, 4).as_subclass(_FakeCuda)
    if falls_back:
        out = unit(x)
        ref = torch.nn.functional.conv3d(x.as_subclass(torch.Tensor), unit.weight, unit.bias).relu()
        torch.testing.assert_close(out.as_subclass(torch.Tensor), ref)
        assert unit.cudnn_fused is False
    else:
        with pytest.raises(type(error)):
            unit(x)
        assert unit.cudnn_fused is True  # the fast path stays on: the next batch may fit


# --------------------------------------------------------------------------- other CPUs


@pytest.mark.slow
@pytest.mark.parametrize("threads, isa", [(1, None), (2, "AVX2")])  # 2 threads, default ISA: the suite itself
def test_numeric_tolerances_hold_on_other_cpus(threads, isa):
    """The float32 comparisons again with another thread count and without AVX-512 (oneDNN picks
    other kernels and summation orders: stand-ins for other CPUs). One test, in a subprocess."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "PYTHONPATH": str(ROOT / "src")}
    env.pop("ONEDNN_MAX_CPU_ISA", None)
    if isa:
        env["ONEDNN_MAX_CPU_ISA"] = isa
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
                        "tests/test_api.py::test_encode_api"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]


@pytest.mark.parametrize("s2d,shape", [(True, (2, 3, 16, 112, 112)), (True, (1, 3, 8, 64, 96)), (False, (2, 3, 16, 112, 112)), (False, (1, 3, 7, 37, 41))])
def test_fast_path_matches_eager(s2d, shape):
    net = random_net(s2d)
    fast = FastVideoNet(net)
    x = torch.rand(*shape)
    with torch.inference_mode():
        ref, out = net(x), fast(x)
        out2 = fast(x)  # second call uses the packed weights
    for key in ("video_embedding", "mixed_5c"):
        scale = ref[key].abs().max()
        assert ((out[key] - ref[key]).abs().max() / scale).item() < 1e-4, key
        assert torch.equal(out[key], out2[key])


def test_fast_bf16_close_to_fp32():
    net = random_net()
    x = torch.rand(2, 3, 16, 112, 112)
    with torch.inference_mode():
        ref = net(x)["video_embedding"]
        out = FastVideoNet(net, precision="bf16")(x)["video_embedding"]
    assert out.dtype == torch.float32
    assert F.cosine_similarity(out, ref).min().item() >= 0.999


def test_fast_path_without_onednn_matches(monkeypatch):
    """The plain ``F.conv3d`` route (what CUDA and builds without oneDNN take) is exact too."""
    import milnce.fast as fast_mod

    monkeypatch.setattr(fast_mod, "_HAS_MKLDNN_POINTWISE", False)
    net = random_net()
    x = torch.rand(1, 3, 8, 64, 64)
    with torch.inference_mode():
        ref, out = net(x), FastVideoNet(net)(x)
    assert ((out["video_embedding"] - ref["video_embedding"]).abs().max() / ref["video_embedding"].abs().max()).item() < 1e-4
