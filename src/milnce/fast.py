"""Fast inference path of the S3D video tower.

Built from a loaded ``VideoTower`` (the exact eager network) and numerically equivalent
to it up to float rounding. What makes it faster on CPU (each step measured in
``benchmarks/bench_inference.py``):

- activations in ``channels_last_3d`` (NDHWC): oneDNN convolutions without layout
  reorders, vectorised max-pooling;
- batch-norm folded into the convolution weights and bias, ReLU fused into the oneDNN
  convolution (``mkldnn._convolution_pointwise``), so one op per conv unit;
- the stride-1 3x3x3 max-pool of each inception block as three separable passes of
  element-wise maxima (exact: max is associative);
- SAME max-pooling without the explicit zero-pad copy where ceil-mode gives the same
  windows (inputs are >= 0 after ReLU and gating, so a missing zero never changes a max);
- space-to-depth, the asymmetric conv1 padding and the crop of its first output row done
  as one copy into a pre-padded buffer;
- gating of the four branches from one channel-mean of the concatenated output and one
  in-place multiply.

``precision="bf16"`` runs convolutions and pooling in bfloat16 (AVX-512 BF16 / AMX on
CPU, tensor cores on GPU) and keeps gating, pooling to features and ``fc`` in float32.
On CUDA the same graph runs with cuDNN (``F.conv3d`` + in-place ReLU).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .model import InceptionBlock, MaxPool3dSame, STConv3D, VideoTower, check_video_input

__all__ = ["FastVideoNet", "fold_bn", "rounding_bound", "CUDA_CONVS", "CUDA_POOLS"]

# CUDA-only choices (no effect on the CPU), timed by benchmarks/bench_gpu.py.
# Measured on an H200 (bf16, batch 64, 32x224x224): cuDNN's fused conv+bias+ReLU 1333 clips/s
# against 1019 for F.conv3d + ReLU; F.max_pool3d 860 against 1019 for the separable passes.
CUDA_CONVS = ("cudnn-fused", "conv+relu")  # cuDNN's fused conv+bias+ReLU (default), or F.conv3d then ReLU
CUDA_POOLS = ("separable", "native")  # the 3x3x3 max-pool as three 1-D passes (default), or F.max_pool3d

_CL = torch.channels_last_3d
_HAS_MKLDNN_POINTWISE = hasattr(torch.ops.mkldnn, "_convolution_pointwise") and torch.backends.mkldnn.is_available()


FLOAT32_UNIT_ROUNDOFF = 2.0**-24


def rounding_bound(module: nn.Module, skip: nn.Module | None = None) -> float:
    """How far two float32 runs of ``module`` that sum in different orders (another batch split,
    thread count, CPU instruction set, fold of batch-norm, runtime) may drift apart, relative to an
    output's largest value: each convolution or linear layer with ``K`` summed terms adds a
    rounding error of about ``sqrt(K)`` units of float32 roundoff (2**-24, errors of random sign),
    and the errors of the layers add up. For the S3D video tower (76 convolutions, 40 linear
    layers) this is about 1.3e-4. ``skip``: a submodule left out (e.g. the text tower)."""
    skipped = set(skip.modules()) if skip is not None else set()
    fan_ins = [m.weight[0].numel() for m in module.modules()
               if isinstance(m, (nn.Conv3d, nn.Linear)) and m not in skipped]
    return FLOAT32_UNIT_ROUNDOFF * sum(math.sqrt(k) for k in fan_ins)


def fold_bn(conv: nn.Conv3d, bn: nn.BatchNorm3d) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of ``bn(conv(x))`` as one convolution (eval-mode statistics)."""
    assert bn.running_var is not None and bn.running_mean is not None  # eval-mode statistics exist
    scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.detach().double() + bn.eps)
    w = conv.weight.detach().double() * scale[:, None, None, None, None]
    b = bn.bias.detach().double() - bn.running_mean.detach().double() * scale
    return w.float(), b.float()


class _ConvReLU(nn.Module):
    """One conv unit with folded BN and ReLU."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, stride: tuple[int, ...], padding: tuple[int, ...]) -> None:
        super().__init__()
        self.cudnn_fused = False  # CUDA: one cuDNN conv+bias+ReLU call (FastVideoNet(cuda_conv="cudnn-fused"))
        self.weight = nn.Parameter(weight.contiguous(memory_format=_CL), requires_grad=False)
        self.bias = nn.Parameter(bias, requires_grad=False)
        self.stride = list(stride)
        self.padding = list(padding)

        # fp32 on CPU: the weight reordered once per input shape into oneDNN's blocked layout
        # (a few shapes kept), instead of a reorder on every call.
        self._packed: dict[tuple[int, ...], torch.Tensor] = {}

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        self._packed = {}  # device or dtype change: pack again
        return super()._apply(fn, recurse)

    def _weight_for(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32 or self.weight.dtype != torch.float32:
            return self.weight.to(x.dtype)  # bf16: oneDNN's own reorder measured faster than pre-packing
        shape = tuple(x.shape)
        packed = self._packed.get(shape)
        if packed is None:
            packed = torch._C._nn.mkldnn_reorder_conv3d_weight(  # type: ignore[call-arg]
                self.weight.detach().to_mkldnn(), self.padding, self.stride, [1, 1, 1], 1, list(shape)
            )
            if len(self._packed) >= 4:
                self._packed = {}
            self._packed[shape] = packed
        return packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and _HAS_MKLDNN_POINTWISE:
            w = self._weight_for(x)
            return torch.ops.mkldnn._convolution_pointwise(x, w, self.bias.to(x.dtype), self.padding, self.stride, [1, 1, 1], 1, "relu", [], "")
        w, b = self.weight.to(x.dtype), self.bias.to(x.dtype)
        if self.cudnn_fused and x.is_cuda:
            try:
                return torch.cudnn_convolution_relu(x, w, b, self.stride, self.padding, [1, 1, 1], 1)
            except RuntimeError as exc:
                if not fused_unsupported(exc):
                    raise  # out of memory, a bad input, a device fault: the caller's to see
                self.cudnn_fused = False  # cuDNN disabled or without this fusion here: the unfused ops, from now on
        return F.conv3d(x, w, b, self.stride, self.padding).relu_()


# What "this cuDNN cannot run the fused op" looks like, as opposed to running out of memory.
_UNSUPPORTED = ("not_supported", "not supported", "unsupported", "not implemented", "cudnn is not",
                "not compiled", "not available", "unable to find an engine", "no valid execution plan",
                "no kernel image")
_OUT_OF_MEMORY = ("out of memory", "alloc_failed", "cudaerrormemoryallocation")


def fused_unsupported(exc: BaseException) -> bool:
    """Whether ``exc`` from ``torch.cudnn_convolution_relu`` means the fused op is unsupported here
    (fall back to ``F.conv3d`` + ReLU for good), never an out-of-memory error (raised again)."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return False
    msg = str(exc).lower()
    if any(m in msg for m in _OUT_OF_MEMORY):
        return False
    return isinstance(exc, NotImplementedError) or any(m in msg for m in _UNSUPPORTED)


def _units(st: STConv3D) -> list[_ConvReLU]:
    w, b = fold_bn(st.conv1, st.bn1)
    out = [_ConvReLU(w, b, st.conv1.stride, st.conv1.padding)]  # type: ignore[arg-type]
    if st.separable:
        w, b = fold_bn(st.conv2, st.bn2)
        out.append(_ConvReLU(w, b, st.conv2.stride, st.conv2.padding))  # type: ignore[arg-type]
    return out


def _same_pool(pool: MaxPool3dSame, x: torch.Tensor) -> torch.Tensor:
    k, s, pad = pool.kernel_size, pool.stride, pool.padding
    # pad is W, H, T pairs; with only a trailing pad and ceil-mode giving the same count of
    # windows, pooling the unpadded (non-negative) input picks the same maxima.
    sizes = x.shape[2:]
    trailing_only = all(pad[2 * i] == 0 for i in range(3))
    same_count = all(
        _ceil_out(n, kk, ss) == _ceil_out(n + pad[2 * (2 - d)] + pad[2 * (2 - d) + 1], kk, ss)
        for d, (n, kk, ss) in enumerate(zip(sizes, k, s))
    )
    if not (trailing_only and same_count) and any(pad):
        x = F.pad(x, pad, value=0.0)
    return F.max_pool3d(x, k, s, ceil_mode=True)


def _max3(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Max over each element and its two neighbours along ``dim`` (borders see only the inside)."""
    n = x.shape[dim]
    if n == 1:
        return x
    pair = torch.maximum(x.narrow(dim, 0, n - 1), x.narrow(dim, 1, n - 1))  # max(x[i], x[i+1])
    out = torch.empty_like(x)
    out.narrow(dim, 0, 1).copy_(pair.narrow(dim, 0, 1))
    out.narrow(dim, n - 1, 1).copy_(pair.narrow(dim, n - 2, 1))
    if n > 2:
        torch.maximum(pair.narrow(dim, 0, n - 2), pair.narrow(dim, 1, n - 2), out=out.narrow(dim, 1, n - 2))
    return out


def max_pool_3x3x3(x: torch.Tensor) -> torch.Tensor:
    """``F.max_pool3d(x, 3, 1, 1)`` as three separable passes (exact; measured ~5% faster for the
    whole bf16 network and on par in fp32)."""
    return _max3(_max3(_max3(x, 4), 3), 2)


def _ceil_out(n: int, k: int, s: int) -> int:
    out = -(-(n - k) // s) + 1
    if (out - 1) * s >= n:  # last window must start inside the input
        out -= 1
    return out


class _Gate(nn.Module):
    """Per-branch self-gating from one channel mean of the concatenated block output."""

    def __init__(self, fcs: list[nn.Linear]) -> None:
        super().__init__()
        self.splits = [fc.in_features for fc in fcs]
        self.weights = nn.ParameterList([nn.Parameter(fc.weight.detach().clone(), requires_grad=False) for fc in fcs])
        self.biases = nn.ParameterList([nn.Parameter(fc.bias.detach().clone(), requires_grad=False) for fc in fcs])

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        means = y.mean(dim=(2, 3, 4)).float()  # CPU and CUDA reductions accumulate bf16 in float32
        gates = [torch.sigmoid(F.linear(m, w, b)) for m, w, b in zip(means.split(self.splits, dim=1), self.weights, self.biases)]
        g = torch.cat(gates, dim=1) if len(gates) > 1 else gates[0]
        return y.mul_(g.to(y.dtype)[:, :, None, None, None])


class _FastInception(nn.Module):
    def __init__(self, block: InceptionBlock) -> None:
        super().__init__()
        self.native_pool_cuda = False  # CUDA: F.max_pool3d instead of the separable passes
        # Running the three 1x1x1 convolutions that read x as one wider convolution was
        # measured slower (the split outputs need copies), so each branch stays separate.
        self.b0 = _units(block.conv_b0)[0]
        self.b1 = nn.Sequential(*_units(block.conv_b1_a), *_units(block.conv_b1_b))
        self.b2 = nn.Sequential(*_units(block.conv_b2_a), *_units(block.conv_b2_b))
        self.b3 = _units(block.conv_b3_b)[0]
        self.gate = _Gate([block.gating_b0.fc, block.gating_b1.fc, block.gating_b2.fc, block.gating_b3.fc])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.max_pool3d(x, 3, 1, 1) if self.native_pool_cuda and x.is_cuda else max_pool_3x3x3(x)
        y = (self.b0(x), self.b1(x), self.b2(x), self.b3(pooled))
        return self.gate(torch.cat(y, dim=1))


class FastVideoNet(nn.Module):
    """Inference-only video tower with the outputs of ``VideoTower.forward``."""

    def __init__(self, net: VideoTower, precision: str = "fp32", *, cuda_conv: str = "cudnn-fused",
                 cuda_pool: str = "separable") -> None:
        super().__init__()
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
        if cuda_conv not in CUDA_CONVS:
            raise ValueError(f"cuda_conv must be one of {', '.join(CUDA_CONVS)}, got {cuda_conv!r}")
        if cuda_pool not in CUDA_POOLS:
            raise ValueError(f"cuda_pool must be one of {', '.join(CUDA_POOLS)}, got {cuda_pool!r}")
        self.dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        self.space_to_depth = net.space_to_depth
        with torch.no_grad():
            self.conv1 = _units(net.conv1)[0]
            if net.space_to_depth:
                # conv1 with padding (1,2,2) then dropping the first output row of T, H, W is a
                # convolution over an input padded by (0,1,1) before and (1,2,2) after (_stem_input).
                self.conv1.padding = [0, 0, 0]
            self.conv_2b = _units(net.conv_2b)[0]
            self.conv_2c = nn.Sequential(*_units(net.conv_2c))
            self.gating = _Gate([net.gating.fc])
            self.pools = {name: getattr(net, name) for name in ("maxpool_2a", "maxpool_3a", "maxpool_4a", "maxpool_5a")}
            self.mixed_3 = nn.Sequential(_FastInception(net.mixed_3b), _FastInception(net.mixed_3c))
            self.mixed_4 = nn.Sequential(*[_FastInception(getattr(net, f"mixed_4{c}")) for c in "bcdef"])
            self.mixed_5 = nn.Sequential(_FastInception(net.mixed_5b), _FastInception(net.mixed_5c))
            self.fc = nn.Linear(net.fc.in_features, net.fc.out_features)
            self.fc.load_state_dict(net.fc.state_dict())
        self.to(net.fc.weight.device)
        self.requires_grad_(False)
        self.eval()
        for m in self.modules():
            if isinstance(m, _ConvReLU):
                m.cudnn_fused = cuda_conv == "cudnn-fused"
            elif isinstance(m, _FastInception):
                m.native_pool_cuda = cuda_pool == "native"
        if self.dtype == torch.bfloat16:
            for m in self.modules():
                if isinstance(m, _ConvReLU):
                    m.weight.data = m.weight.data.to(torch.bfloat16).contiguous(memory_format=_CL)
                    m.bias.data = m.bias.data.to(torch.bfloat16)

    def _stem_input(self, video: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = video.shape
        if not self.space_to_depth:
            return video.to(self.dtype).contiguous(memory_format=_CL)
        # Space-to-depth straight into an NDHWC buffer padded (0,1,1) before / (1,2,2) after.
        buf = video.new_zeros((b, t // 2 + 1, h // 2 + 3, w // 2 + 3, 8 * c), dtype=self.dtype)
        src = video.reshape(b, c, t // 2, 2, h // 2, 2, w // 2, 2).permute(0, 2, 4, 6, 3, 5, 7, 1)
        buf[:, : t // 2, 1 : h // 2 + 1, 1 : w // 2 + 1].view(b, t // 2, h // 2, w // 2, 2, 2, 2, c).copy_(src)
        return buf.permute(0, 4, 1, 2, 3)  # logical B, 8C, T', H', W' in channels_last_3d

    @torch.inference_mode()
    def forward(self, video: torch.Tensor) -> dict[str, torch.Tensor]:
        check_video_input(video, self.space_to_depth)
        return self.run(video)

    def run(self, video: torch.Tensor) -> dict[str, torch.Tensor]:
        """``forward`` without the input check and the inference-mode wrapper (what
        ``torch.compile`` and CUDA-graph capture take; call it under ``torch.inference_mode()``)."""
        x = self.conv1(self._stem_input(video))
        x = _same_pool(self.pools["maxpool_2a"], x)
        x = self.conv_2c(self.conv_2b(x))
        x = self.gating(x)
        x = _same_pool(self.pools["maxpool_3a"], x)
        x = self.mixed_3(x)
        x = _same_pool(self.pools["maxpool_4a"], x)
        x = self.mixed_4(x)
        x = _same_pool(self.pools["maxpool_5a"], x)
        x = self.mixed_5(x)
        pooled = x.mean(dim=(2, 3, 4), dtype=torch.float32)
        return {"video_embedding": self.fc(pooled), "mixed_5c": pooled}
