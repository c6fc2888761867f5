"""The S3D-G text-video network trained with MIL-NCE on HowTo100M.

``S3D`` keeps the module names of the published checkpoint (``state_dict.tsv``), so
``S3D(...).load_state_dict(torch.load("s3d_howto100m.pth"))`` works with ``strict=True``.
This module only takes tensors: no files are read here except the vocabulary given to
the drop-in ``S3D`` constructor.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import UsageError
from .text import MAX_WORDS, Tokenizer

__all__ = [
    "S3D",
    "VideoTower",
    "TextTower",
    "STConv3D",
    "SelfGating",
    "MaxPool3dSame",
    "InceptionBlock",
    "INCEPTION_CONFIG",
    "space_to_depth",
    "check_video_input",
    "state_dict_shapes",
    "VOCAB_SIZE",
    "EMBED_DIM",
]

VOCAB_SIZE = 66250  # 66,249 words + padding
EMBED_DIM = 512
WORD_DIM = 300

# name: (in, b0, b1a, b1b, b2a, b2b, b3)
INCEPTION_CONFIG: dict[str, tuple[int, int, int, int, int, int, int]] = {
    "mixed_3b": (192, 64, 96, 128, 16, 32, 32),
    "mixed_3c": (256, 128, 128, 192, 32, 96, 64),
    "mixed_4b": (480, 192, 96, 208, 16, 48, 64),
    "mixed_4c": (512, 160, 112, 224, 24, 64, 64),
    "mixed_4d": (512, 128, 128, 256, 24, 64, 64),
    "mixed_4e": (512, 112, 144, 288, 32, 64, 64),
    "mixed_4f": (528, 256, 160, 320, 32, 128, 128),
    "mixed_5b": (832, 256, 160, 320, 32, 128, 128),
    "mixed_5c": (832, 384, 192, 384, 48, 128, 128),
}


def _triple(v: int | Sequence[int]) -> tuple[int, int, int]:
    if isinstance(v, int):
        return (v, v, v)
    t = tuple(v)
    if len(t) != 3:
        raise ValueError(f"expected 3 values, got {v}")
    return t  # type: ignore[return-value]


class _NoInitOnMeta:
    """Skip the random init of a layer built on the meta device: ``load_model`` builds the network
    there and then assigns the loaded weights, so the init would be thrown away, and on meta it
    runs as slow Python decompositions (``Embedding``'s ``normal_`` even imports ``torch._dynamo``):
    about 0.3 s of start-up. On a real device the layer initialises as usual."""

    weight: torch.Tensor

    def reset_parameters(self) -> None:
        if self.weight.is_meta:
            return
        super().reset_parameters()  # type: ignore[misc]

    def _get_name(self) -> str:  # print as the torch layer it is
        return type(self).__bases__[-1].__name__


class _Conv3d(_NoInitOnMeta, nn.Conv3d):
    pass


class _Linear(_NoInitOnMeta, nn.Linear):
    pass


class _Embedding(_NoInitOnMeta, nn.Embedding):
    pass


class STConv3D(nn.Module):
    """Conv3d (no bias) -> BatchNorm3d -> ReLU; ``separable`` splits a k x k x k kernel
    into a spatial 1 x k x k (``conv1``/``bn1``) and a temporal k x 1 x 1 (``conv2``/``bn2``)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] = 0,
        separable: bool = False,
    ) -> None:
        super().__init__()
        k, s, p = _triple(kernel_size), _triple(stride), _triple(padding)
        self.separable = separable and k[0] != 1
        if self.separable:
            self.conv1 = _Conv3d(in_channels, out_channels, (1, k[1], k[2]), (1, s[1], s[2]), (0, p[1], p[2]), bias=False)
            self.bn1 = nn.BatchNorm3d(out_channels)
            self.conv2 = _Conv3d(out_channels, out_channels, (k[0], 1, 1), (s[0], 1, 1), (p[0], 0, 0), bias=False)
            self.bn2 = nn.BatchNorm3d(out_channels)
        else:
            self.conv1 = _Conv3d(in_channels, out_channels, k, s, p, bias=False)
            self.bn1 = nn.BatchNorm3d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        if self.separable:
            x = F.relu(self.bn2(self.conv2(x)))
        return x


class SelfGating(nn.Module):
    """``x * sigmoid(fc(mean_{T,H,W}(x)))`` per channel."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc = _Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.fc(x.mean(dim=(2, 3, 4))))
        return gate[:, :, None, None, None] * x


def same_padding(kernel: Sequence[int], stride: Sequence[int]) -> tuple[int, ...]:
    """TF "SAME" pads for (T, H, W) in ``F.pad`` order (W first): ``max(k - s, 0)`` split low/high."""
    pads: list[int] = []
    for k, s in reversed(list(zip(kernel, stride))):
        total = max(k - s, 0)
        pads += [total // 2, total - total // 2]
    return tuple(pads)


class MaxPool3dSame(nn.Module):
    """TensorFlow "SAME" max-pooling: zero-pad, then ``MaxPool3d(ceil_mode=True)``."""

    def __init__(self, kernel_size: Sequence[int], stride: Sequence[int]) -> None:
        super().__init__()
        self.kernel_size = tuple(kernel_size)
        self.stride = tuple(stride)
        self.padding = same_padding(self.kernel_size, self.stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(self.padding):
            x = F.pad(x, self.padding, value=0.0)
        return F.max_pool3d(x, self.kernel_size, self.stride, ceil_mode=True)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class InceptionBlock(nn.Module):
    """Four gated branches concatenated on channels: 1x1x1 | 1x1x1 + sep3 | 1x1x1 + sep3 | pool + 1x1x1."""

    def __init__(self, in_ch: int, b0: int, b1a: int, b1b: int, b2a: int, b2b: int, b3: int) -> None:
        super().__init__()
        self.conv_b0 = STConv3D(in_ch, b0, 1)
        self.conv_b1_a = STConv3D(in_ch, b1a, 1)
        self.conv_b1_b = STConv3D(b1a, b1b, 3, padding=1, separable=True)
        self.conv_b2_a = STConv3D(in_ch, b2a, 1)
        self.conv_b2_b = STConv3D(b2a, b2b, 3, padding=1, separable=True)
        self.maxpool_b3 = nn.MaxPool3d(3, stride=1, padding=1)
        self.conv_b3_b = STConv3D(in_ch, b3, 1)
        self.gating_b0 = SelfGating(b0)
        self.gating_b1 = SelfGating(b1b)
        self.gating_b2 = SelfGating(b2b)
        self.gating_b3 = SelfGating(b3)
        self.output_dim = b0 + b1b + b2b + b3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y0 = self.gating_b0(self.conv_b0(x))
        y1 = self.gating_b1(self.conv_b1_b(self.conv_b1_a(x)))
        y2 = self.gating_b2(self.conv_b2_b(self.conv_b2_a(x)))
        y3 = self.gating_b3(self.conv_b3_b(self.maxpool_b3(x)))
        return torch.cat((y0, y1, y2, y3), dim=1)


def space_to_depth(x: torch.Tensor) -> torch.Tensor:
    """``B,C,T,H,W`` -> ``B,8C,T/2,H/2,W/2`` with channel ``((dt*2+dh)*2+dw)*C + c``."""
    b, c, t, h, w = x.shape
    x = x.reshape(b, c, t // 2, 2, h // 2, 2, w // 2, 2)
    x = x.permute(0, 3, 5, 7, 1, 2, 4, 6)
    return x.reshape(b, 8 * c, t // 2, h // 2, w // 2)


_warned_range = False


def check_video_input(video: torch.Tensor, space_to_depth: bool, warn_range: bool = True) -> None:
    """Raise a clear error for a video tensor the network cannot take (dtype and shape; the
    value range only warns, and only for CPU tensors: no host-device synchronisation)."""
    global _warned_range
    if not isinstance(video, torch.Tensor):
        raise TypeError(f"video must be a torch.Tensor of shape B x 3 x T x H x W, got {type(video).__name__}")
    if video.ndim != 5:
        hint = " (add a batch dimension: video[None])" if video.ndim == 4 else ""
        raise UsageError(f"video must have 5 dims B x 3 x T x H x W, got shape {tuple(video.shape)}{hint}")
    if video.shape[1] != 3:
        raise UsageError(
            f"video must have 3 RGB channels at dim 1 (B x 3 x T x H x W), got shape {tuple(video.shape)}"
        )
    if not video.is_floating_point():
        raise TypeError(
            f"video must be a float tensor with values in [0, 1], got dtype {video.dtype}; "
            "for uint8 frames use video.float() / 255"
        )
    _, _, t, h, w = video.shape
    if space_to_depth and (t % 2 or h % 2 or w % 2):
        raise UsageError(
            f"with space_to_depth=True, T, H and W must be even, got T={t}, H={h}, W={w}; "
            "use e.g. 32 x 224 x 224 (the published setting) or 16 frames, sides 200..256"
        )
    min_t = 2 if space_to_depth else 1
    if t < min_t or h < 2 or w < 2:
        raise UsageError(f"video too small: T={t}, H={h}, W={w}; use 32 x 224 x 224 (16 frames and sides 200..256 also work)")
    # The value range is checked only for data on the CPU (where it enters): on an accelerator
    # min()/max() would wait for the device and break CUDA graph capture.
    if warn_range and not _warned_range and video.device.type == "cpu" and video.numel() and not torch.jit.is_tracing():
        lo, hi = float(video.min()), float(video.max())
        if lo < -1e-3 or hi > 1 + 1e-3:
            _warned_range = True
            warnings.warn(
                f"video values span [{lo:.3g}, {hi:.3g}]; the model expects RGB in [0, 1] "
                "without mean/std normalisation (divide uint8 frames by 255)",
                stacklevel=3,
            )


class VideoTower(nn.Module):
    """The S3D-G video network (eager, structured as the reference port)."""

    def __init__(self, num_classes: int = EMBED_DIM, space_to_depth: bool = True) -> None:
        super().__init__()
        self.space_to_depth = space_to_depth
        if space_to_depth:
            self.conv1 = STConv3D(24, 64, (2, 4, 4), stride=1, padding=(1, 2, 2))
        else:
            self.conv1 = STConv3D(3, 64, (3, 7, 7), stride=2, padding=(1, 3, 3))
        self.conv_2b = STConv3D(64, 64, 1)
        self.conv_2c = STConv3D(64, 192, 3, padding=1, separable=True)
        self.gating = SelfGating(192)
        self.maxpool_2a = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.maxpool_3a = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.mixed_3b = InceptionBlock(*INCEPTION_CONFIG["mixed_3b"])
        self.mixed_3c = InceptionBlock(*INCEPTION_CONFIG["mixed_3c"])
        self.maxpool_4a = MaxPool3dSame((3, 3, 3), (2, 2, 2))
        self.mixed_4b = InceptionBlock(*INCEPTION_CONFIG["mixed_4b"])
        self.mixed_4c = InceptionBlock(*INCEPTION_CONFIG["mixed_4c"])
        self.mixed_4d = InceptionBlock(*INCEPTION_CONFIG["mixed_4d"])
        self.mixed_4e = InceptionBlock(*INCEPTION_CONFIG["mixed_4e"])
        self.mixed_4f = InceptionBlock(*INCEPTION_CONFIG["mixed_4f"])
        self.maxpool_5a = MaxPool3dSame((2, 2, 2), (2, 2, 2))
        self.mixed_5b = InceptionBlock(*INCEPTION_CONFIG["mixed_5b"])
        self.mixed_5c = InceptionBlock(*INCEPTION_CONFIG["mixed_5c"])
        self.fc = _Linear(1024, num_classes)

    def features(self, video: torch.Tensor) -> torch.Tensor:
        """``mixed_5c`` map before pooling: B x 1024 x T/8 x H/32 x W/32."""
        x = space_to_depth(video) if self.space_to_depth else video
        x = self.conv1(x)
        if self.space_to_depth:
            x = x[:, :, 1:, 1:, 1:]
        x = self.maxpool_2a(x)
        x = self.conv_2b(x)
        x = self.conv_2c(x)
        x = self.gating(x)
        x = self.maxpool_3a(x)
        x = self.mixed_3c(self.mixed_3b(x))
        x = self.maxpool_4a(x)
        for block in (self.mixed_4b, self.mixed_4c, self.mixed_4d, self.mixed_4e, self.mixed_4f):
            x = block(x)
        x = self.maxpool_5a(x)
        return self.mixed_5c(self.mixed_5b(x))

    def forward(self, video: torch.Tensor) -> dict[str, torch.Tensor]:
        check_video_input(video, self.space_to_depth)
        pooled = self.features(video).mean(dim=(2, 3, 4))
        return {"video_embedding": self.fc(pooled), "mixed_5c": pooled}


class TextTower(nn.Module):
    """Word embedding -> fc1 -> ReLU -> max over words -> fc2.

    Called with a ``LongTensor[B, max_words]`` of ids, or with a list of sentences when a
    tokenizer is attached (as in the reference ``net.text_module(['open door'])``).
    """

    def __init__(
        self,
        embd_dim: int = EMBED_DIM,
        num_embeddings: int = VOCAB_SIZE,
        word_embedding_dim: int = WORD_DIM,
        output_dim: int = 2048,
        tokenizer: Tokenizer | None = None,
        max_words: int = MAX_WORDS,
    ) -> None:
        super().__init__()
        if tokenizer is not None and tokenizer.vocab_size != num_embeddings:
            raise UsageError(
                f"vocabulary has {len(tokenizer)} words (+1 padding = {tokenizer.vocab_size} ids) "
                f"but the word embedding has {num_embeddings} rows; the published model uses "
                f"{VOCAB_SIZE - 1} words"
            )
        self.tokenizer = tokenizer
        self.max_words = tokenizer.max_words if tokenizer is not None else max_words
        self.word_embd = _Embedding(num_embeddings, word_embedding_dim)
        self.fc1 = _Linear(word_embedding_dim, output_dim)
        self.fc2 = _Linear(output_dim, embd_dim)

    def encode_ids(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.ndim != 2 or ids.dtype not in (torch.int64, torch.int32):
            raise UsageError(f"token ids must be an integer tensor B x max_words, got {tuple(ids.shape)} {ids.dtype}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.word_embd.num_embeddings):
            raise UsageError(f"token ids must be in [0, {self.word_embd.num_embeddings}), got range [{int(ids.min())}, {int(ids.max())}]")
        x = F.relu(self.fc1(self.word_embd(ids)))
        return self.fc2(x.max(dim=1).values)

    def forward(self, text: Sequence[str] | torch.Tensor) -> dict[str, torch.Tensor]:
        if isinstance(text, torch.Tensor):
            ids = text
        else:
            if self.tokenizer is None:
                raise RuntimeError("this text tower has no tokenizer: pass token ids or build it with a vocabulary")
            ids = self.tokenizer(text)
        ids = ids.to(self.word_embd.weight.device)
        return {"text_embedding": self.encode_ids(ids)}


class S3D(VideoTower):
    """Drop-in for the published ``S3D(dict_path, num_classes)``.

    >>> net = S3D('s3d_dict.npy', 512)                       # doctest: +SKIP
    >>> net.load_state_dict(torch.load('s3d_howto100m.pth'))  # doctest: +SKIP
    >>> net.eval()(video)           # {'video_embedding': B x 512, 'mixed_5c': B x 1024}
    >>> net.text_module(['open door'])                          # {'text_embedding': B x 512}

    ``dict_path`` may be a path to the vocabulary ``.npy``, an array/list of words, a
    ``Tokenizer``, or ``None`` (no tokenizer: the text module then takes token ids).
    """

    def __init__(
        self,
        dict_path: str | os.PathLike[str] | Sequence[str] | np.ndarray | Tokenizer | None = None,
        num_classes: int = EMBED_DIM,
        gating: bool = True,
        space_to_depth: bool = True,
        word_embedding_dim: int = WORD_DIM,
        num_embeddings: int | None = None,
    ) -> None:
        if not gating:
            raise ValueError("gating=False is not supported: the published model applies self-gating everywhere")
        super().__init__(num_classes=num_classes, space_to_depth=space_to_depth)
        if dict_path is None or isinstance(dict_path, Tokenizer):
            tokenizer = dict_path
        elif isinstance(dict_path, (str, os.PathLike)):
            tokenizer = Tokenizer.from_file(dict_path)
        else:
            tokenizer = Tokenizer(dict_path)
        if num_embeddings is None:
            num_embeddings = tokenizer.vocab_size if tokenizer is not None else VOCAB_SIZE
        self.text_module = TextTower(num_classes, num_embeddings, word_embedding_dim, tokenizer=tokenizer)


def _unit_shapes(prefix: str, cin: int, cout: int, k: tuple[int, int, int], separable: bool) -> dict[str, tuple[int, ...]]:
    """State-dict shapes of one ``STConv3D``."""
    def bn(name: str) -> dict[str, tuple[int, ...]]:
        return {f"{prefix}{name}.{p}": (cout,) for p in ("weight", "bias", "running_mean", "running_var")} | {
            f"{prefix}{name}.num_batches_tracked": ()}

    if separable and k[0] != 1:
        return ({f"{prefix}conv1.weight": (cout, cin, 1, k[1], k[2])} | bn("bn1")
                | {f"{prefix}conv2.weight": (cout, cout, k[0], 1, 1)} | bn("bn2"))
    return {f"{prefix}conv1.weight": (cout, cin, *k)} | bn("bn1")


def state_dict_shapes(space_to_depth: bool = True, vocab_size: int = VOCAB_SIZE, embed_dim: int = EMBED_DIM) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the ``S3D`` state dict, in module order, computed without building the network
    (``state_dict.tsv`` for the defaults; a test checks it against ``S3D(...).state_dict()``)."""
    shapes: dict[str, tuple[int, ...]] = {}
    if space_to_depth:
        shapes |= _unit_shapes("conv1.", 24, 64, (2, 4, 4), False)
    else:
        shapes |= _unit_shapes("conv1.", 3, 64, (3, 7, 7), False)
    shapes |= _unit_shapes("conv_2b.", 64, 64, (1, 1, 1), False)
    shapes |= _unit_shapes("conv_2c.", 64, 192, (3, 3, 3), True)
    shapes |= {"gating.fc.weight": (192, 192), "gating.fc.bias": (192,)}
    for name, (cin, b0, b1a, b1b, b2a, b2b, b3) in INCEPTION_CONFIG.items():
        p = name + "."
        shapes |= _unit_shapes(p + "conv_b0.", cin, b0, (1, 1, 1), False)
        shapes |= _unit_shapes(p + "conv_b1_a.", cin, b1a, (1, 1, 1), False)
        shapes |= _unit_shapes(p + "conv_b1_b.", b1a, b1b, (3, 3, 3), True)
        shapes |= _unit_shapes(p + "conv_b2_a.", cin, b2a, (1, 1, 1), False)
        shapes |= _unit_shapes(p + "conv_b2_b.", b2a, b2b, (3, 3, 3), True)
        shapes |= _unit_shapes(p + "conv_b3_b.", cin, b3, (1, 1, 1), False)
        for g, c in (("b0", b0), ("b1", b1b), ("b2", b2b), ("b3", b3)):
            shapes |= {f"{p}gating_{g}.fc.weight": (c, c), f"{p}gating_{g}.fc.bias": (c,)}
    shapes |= {"fc.weight": (embed_dim, 1024), "fc.bias": (embed_dim,)}
    shapes |= {
        "text_module.word_embd.weight": (vocab_size, WORD_DIM),
        "text_module.fc1.weight": (2048, WORD_DIM),
        "text_module.fc1.bias": (2048,),
        "text_module.fc2.weight": (embed_dim, 2048),
        "text_module.fc2.bias": (embed_dim,),
    }
    return shapes
