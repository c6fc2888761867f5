"""Export the video and text towers to ONNX for deployment (``pip install 'milnce[onnx]'``).

``export_onnx(model, "s3d")`` writes

- ``s3d.video.onnx``: input ``video`` (B x 3 x T x H x W float32, RGB in [0, 1], no mean/std),
  outputs ``video_embedding`` (B x 512) and ``mixed_5c`` (B x 1024);
- ``s3d.text.onnx``: input ``text_ids`` (B x 16 int64, from ``milnce.Tokenizer``), output
  ``text_embedding`` (B x 512);
- ``s3d.vocab.npy``: the word list for ``milnce.Tokenizer.from_file`` (tokenizing stays in Python).

The batch axis is dynamic; T, H and W are fixed at export (default: the weights' input
conventions, 32 x 224 x 224). The graphs come from the exact eager network (``model.net``, fp32),
never from the fast path, with the TorchScript-based exporter at opset ``OPSET``.
"""

from __future__ import annotations

import copy
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .atomic import atomic_file, atomic_write_bytes
from .errors import MilnceError, OutputError, UsageError
from .model import S3D, check_video_input
from .windows import WindowSettings

__all__ = ["OPSET", "VERIFY_FACTOR", "OnnxExport", "OnnxCheck", "onnx_paths", "check_targets", "export_onnx",
           "verify_onnx", "check_onnx"]

OPSET = 17  # supported by torch's TorchScript-based exporter and by onnxruntime >= 1.14

# check_onnx: onnxruntime may be this many times further from the float64 network than PyTorch's
# float32 run is (two float32 computations that sum in different orders; README, "Export (ONNX)").
VERIFY_FACTOR = 4.0


@dataclass(frozen=True)
class OnnxExport:
    """What ``export_onnx`` wrote (``None`` for a part not exported) and how."""

    video: Path | None
    text: Path | None
    vocab: Path | None
    opset: int
    num_frames: int
    size: int


def onnx_paths(prefix: str | os.PathLike[str]) -> tuple[Path, Path, Path]:
    """``(video, text, vocab)`` file names for ``prefix``; a trailing ``.onnx`` is dropped
    (``s3d`` and ``s3d.onnx`` both give ``s3d.video.onnx``, ``s3d.text.onnx``, ``s3d.vocab.npy``)."""
    p = Path(prefix)
    if not p.name or p.name in (".", ".."):
        raise UsageError(f"the ONNX output needs a file name prefix, got {str(prefix)!r}")
    stem = p.name[: -len(".onnx")] if p.name.lower().endswith(".onnx") and len(p.name) > 5 else p.name
    return p.with_name(f"{stem}.video.onnx"), p.with_name(f"{stem}.text.onnx"), p.with_name(f"{stem}.vocab.npy")


def check_targets(prefix: str | os.PathLike[str], *, video: bool = True, text: bool = True,
                  overwrite: bool = False) -> list[Path]:
    """The files an export to ``prefix`` writes (the video graph; the text graph and the
    vocabulary), ``UsageError`` for a bad prefix or, unless ``overwrite``, for files already there
    (call it before loading the weights)."""
    video_path, text_path, vocab_path = onnx_paths(prefix)
    wanted = [p for p, on in ((video_path, video), (text_path, text), (vocab_path, text)) if on]
    present = [str(p) for p in wanted if p.exists()]
    if present and not overwrite:
        raise UsageError(f"{', '.join(present)} already exist(s); pass --overwrite to replace, or choose another prefix")
    return wanted


class _VideoGraph(nn.Module):
    """The eager network's video forward with its dict output as a tuple."""

    def __init__(self, net: S3D) -> None:
        super().__init__()
        self.net = net

    def forward(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.net(video)
        return out["video_embedding"], out["mixed_5c"]


class _TextGraph(nn.Module):
    """The eager text tower on token ids."""

    def __init__(self, net: S3D) -> None:
        super().__init__()
        self.text = net.text_module

    def forward(self, text_ids: torch.Tensor) -> torch.Tensor:
        return self.text.encode_ids(text_ids)


def _network(model: Any) -> S3D:
    net = getattr(model, "net", model)  # a MILNCE holds the exact network as .net
    if not isinstance(net, S3D):
        raise UsageError(f"export_onnx needs a milnce.MILNCE or milnce.S3D, got {type(model).__name__}")
    return net


def _onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise MilnceError("ONNX export needs the onnx package: pip install 'milnce[onnx]'") from None
    return onnx


def _graph_bytes(module: nn.Module, example: torch.Tensor, inputs: list[str], outputs: list[str], opset: int) -> bytes:
    buf = io.BytesIO()
    axes = {name: {0: "batch"} for name in inputs + outputs}
    with warnings.catch_warnings():
        # The TorchScript exporter announces its deprecation, and tracing notes that the
        # network's shape checks (T, H, W even, ...) become constants: both expected here.
        warnings.simplefilter("ignore")
        target: Any = buf  # the exporter writes to file objects too
        torch.onnx.export(module, (example,), target, dynamo=False, opset_version=opset, input_names=inputs,
                          output_names=outputs, dynamic_axes=axes, do_constant_folding=True)
    return buf.getvalue()


def _finish(raw: bytes, doc: str, meta: dict[str, str]) -> bytes:
    onnx = _onnx()
    proto = onnx.load_from_string(raw)
    proto.doc_string = doc
    proto.producer_name = "milnce"
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def export_onnx(
    model: Any,
    path: str | os.PathLike[str],
    *,
    num_frames: int | None = None,
    size: int | None = None,
    opset: int = OPSET,
    video: bool = True,
    text: bool = True,
) -> OnnxExport:
    """Write ``PATH.video.onnx``, ``PATH.text.onnx`` and ``PATH.vocab.npy`` (see ``onnx_paths``).

    ``model`` is a ``milnce.MILNCE`` (from ``load_model``) or a ``milnce.S3D``; its exact eager
    network is exported in fp32 whatever its fast path or precision. ``num_frames``/``size`` fix
    the video input's T and H = W (default: the weights' conventions). Files are written
    atomically; the model is left as it was.
    """
    _onnx()
    if not video and not text:
        raise UsageError("nothing to export: enable the video or the text tower")
    if isinstance(opset, bool) or not isinstance(opset, int) or not 9 <= opset <= 20:
        raise UsageError(f"opset must be a whole number in [9, 20] (the TorchScript exporter's range), got {opset!r}")
    net = _network(model)
    window = WindowSettings.for_model(model, num_frames=num_frames, size=size)
    video_path, text_path, vocab_path = onnx_paths(path)
    try:
        video_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(video_path.parent, exc) from exc
    param = next(net.parameters())
    example = torch.rand(1, 3, window.num_frames, window.size, window.size, device=param.device)
    check_video_input(example, net.space_to_depth)  # a clear error for an unusable T or size

    info = getattr(model, "info", None)
    from . import __version__

    meta = {
        "milnce.version": __version__,
        "milnce.weights": getattr(info, "name", "") or "",
        "milnce.weights_id": str(getattr(model, "weights_id", "") or ""),
        "milnce.opset": str(opset),
    }
    modes = {m: m.training for m in net.modules()}
    written: dict[str, Path | None] = {"video": None, "text": None, "vocab": None}
    try:
        net.eval()
        if video:
            raw = _graph_bytes(_VideoGraph(net).eval(), example, ["video"], ["video_embedding", "mixed_5c"], opset)
            data = _finish(raw, f"milnce S3D video tower: video B x 3 x {window.num_frames} x {window.size} x "
                           f"{window.size} float32 RGB in [0, 1] (no mean/std), {window.fps:g} fps -> "
                           "video_embedding B x 512, mixed_5c B x 1024",
                           {**meta, "milnce.tower": "video", "milnce.num_frames": str(window.num_frames),
                            "milnce.size": str(window.size), "milnce.fps": f"{window.fps:g}",
                            "milnce.value_range": "0,1"})
            atomic_write_bytes(video_path, data)
            written["video"] = video_path
        if text:
            tok = net.text_module.tokenizer
            ids = torch.zeros(1, net.text_module.max_words, dtype=torch.long, device=param.device)
            raw = _graph_bytes(_TextGraph(net).eval(), ids, ["text_ids"], ["text_embedding"], opset)
            data = _finish(raw, f"milnce S3D text tower: text_ids B x {net.text_module.max_words} int64 from "
                           "milnce.Tokenizer (0 = padding) -> text_embedding B x 512",
                           {**meta, "milnce.tower": "text", "milnce.max_words": str(net.text_module.max_words),
                            "milnce.vocab_size": str(net.text_module.word_embd.num_embeddings)})
            atomic_write_bytes(text_path, data)
            written["text"] = text_path
            if tok is not None:
                vocab = np.asarray(tok.vocab, dtype=str)
                with atomic_file(vocab_path) as f:
                    np.save(f, vocab, allow_pickle=False)
                written["vocab"] = vocab_path
    finally:
        for m, mode in modes.items():
            m.training = mode
    return OnnxExport(written["video"], written["text"], written["vocab"], opset, window.num_frames, window.size)


@dataclass(frozen=True)
class OnnxCheck:
    """One output of ``check_onnx``: differences relative to the output's largest value."""

    name: str
    onnx_vs_torch: float  # onnxruntime against PyTorch float32 (what ``verify_onnx`` reports)
    onnx_error: float  # onnxruntime against the float64 network
    torch_error: float  # PyTorch float32 against the float64 network
    tolerance: float  # the largest onnx_error accepted

    @property
    def ok(self) -> bool:
        return self.onnx_error <= self.tolerance


def _rel(ours: np.ndarray, ref: torch.Tensor) -> float:
    r = ref.detach().double().cpu().numpy()
    return float(np.abs(ours.astype(np.float64) - r).max() / max(float(np.abs(r).max()), 1e-30))


def _compare(model: Any, export: OnnxExport, batch: int, seed: int, video: torch.Tensor | None,
             fp64: bool) -> dict[str, tuple[np.ndarray, torch.Tensor, torch.Tensor | None]]:
    """Per output: (onnxruntime's, PyTorch float32's, and with ``fp64`` the float64 network's)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise MilnceError("checking the export needs onnxruntime: pip install 'milnce[onnx]'") from None
    net = _network(model)
    g = torch.Generator().manual_seed(seed)
    device = next(net.parameters()).device
    net64 = copy.deepcopy(net).double() if fp64 else None
    out: dict[str, tuple[np.ndarray, torch.Tensor, torch.Tensor | None]] = {}
    modes = {m: m.training for m in net.modules()}
    try:
        net.eval()
        with torch.no_grad():
            if export.video is not None:
                x = video if video is not None else torch.rand(batch, 3, export.num_frames, export.size, export.size,
                                                               generator=g)
                sess = ort.InferenceSession(str(export.video), providers=["CPUExecutionProvider"])
                emb, feat = sess.run(["video_embedding", "mixed_5c"], {"video": x.float().cpu().numpy()})
                ref = net(x.to(device))
                ref64 = net64(x.to(device, torch.float64)) if net64 is not None else {}
                out["video_embedding"] = (emb, ref["video_embedding"], ref64.get("video_embedding"))
                out["mixed_5c"] = (feat, ref["mixed_5c"], ref64.get("mixed_5c"))
            if export.text is not None:
                t = net.text_module
                ids = torch.randint(0, t.word_embd.num_embeddings, (batch, t.max_words), generator=g)
                ids[:, t.max_words // 2:] = 0  # padded like real sentences
                sess = ort.InferenceSession(str(export.text), providers=["CPUExecutionProvider"])
                (temb,) = sess.run(["text_embedding"], {"text_ids": ids.numpy()})
                t64 = net64.text_module.encode_ids(ids.to(device)) if net64 is not None else None
                out["text_embedding"] = (temb, t.encode_ids(ids.to(device)), t64)
    finally:
        for m, mode in modes.items():
            m.training = mode
    return out


def verify_onnx(model: Any, export: OnnxExport, batch: int = 2, seed: int = 0,
                video: torch.Tensor | None = None) -> dict[str, float]:
    """Run the exported files with onnxruntime on ``batch`` random inputs (or the clips ``video``,
    float ``B x 3 x T x H x W`` in [0, 1]) and return, per output, the largest difference to the
    eager network relative to the output's largest value."""
    return {name: _rel(ours, ref) for name, (ours, ref, _) in _compare(model, export, batch, seed, video, False).items()}


def check_onnx(model: Any, export: OnnxExport, batch: int = 2, seed: int = 0,
               video: torch.Tensor | None = None) -> dict[str, OnnxCheck]:
    """``verify_onnx`` with a judge: the network run in float64 is the reference, and the export
    passes when onnxruntime is no further from it than float32 arithmetic explains: ``VERIFY_FACTOR``
    times PyTorch's own float32 error on the same input, and at least the rounding bound of the
    layers (``milnce.fast.rounding_bound``). Random noise is far from the video the weights were
    trained on and amplifies rounding, which is why the bound is measured, not fixed."""
    from .fast import rounding_bound

    net = _network(model)
    floors = {"video_embedding": rounding_bound(net, skip=net.text_module), "text_embedding":
              rounding_bound(net.text_module)}
    floors["mixed_5c"] = floors["video_embedding"]
    checks = {}
    for name, (ours, ref, ref64) in _compare(model, export, batch, seed, video, True).items():
        assert ref64 is not None
        torch_error = _rel(ref.double().cpu().numpy(), ref64)
        checks[name] = OnnxCheck(name, _rel(ours, ref), _rel(ours, ref64), torch_error,
                                 max(VERIFY_FACTOR * torch_error, floors[name]))
    return checks
