"""Published weights: their registry, pickle-free loading, validation and conversion.

A checkpoint is accepted in three forms, all loaded without unpickling code:
the published plain state dict (``s3d_howto100m.pth``), a MIL-NCE training checkpoint
(``{'epoch', 'state_dict': {'module.…'}, 'optimizer', ...}``) and a ``safetensors`` file.
The variant (``space_to_depth``) and the vocabulary size are read off the weights.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from . import integrity
from .atomic import atomic_file, atomic_write_bytes, atomic_write_text
from .cache import sha256_file
from .errors import MilnceError, MissingFileError, OutputError, UsageError
from .model import VOCAB_SIZE, state_dict_shapes

__all__ = [
    "WeightsInfo",
    "REGISTRY",
    "DEFAULT_WEIGHTS",
    "CheckpointError",
    "CheckpointSpec",
    "load_checkpoint",
    "inspect_state_dict",
    "expected_shapes",
    "save_bundle",
    "check_bundle_target",
    "load_verified",
    "VerifiedCheckpoint",
    "resolve_weights_file",
    "fingerprint",
    "sha256_file",
    "find_run_checkpoint",
    "run_weights_info",
]


class CheckpointError(MilnceError, ValueError):
    """A weights file that is not a usable S3D text-video checkpoint."""


@dataclass(frozen=True)
class WeightsInfo:
    """A published set of weights with the input conventions it was trained with."""

    name: str
    url: str
    vocab_url: str
    filename: str
    vocab_filename: str
    num_bytes: int
    vocab_num_bytes: int
    vocab_words: int
    space_to_depth: bool = True
    embed_dim: int = 512
    num_frames: int = 32
    fps: float = 10.0
    size: int = 224
    value_range: tuple[float, float] = (0.0, 1.0)
    description: str = ""
    # mirror entries (milnce.mirrors): a folder URL holding both files, or "WEIGHTS_URL VOCAB_URL"
    mirrors: tuple[str, ...] = ()
    results: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def transforms(self) -> str:
        return (
            f"RGB float in [{self.value_range[0]:g}, {self.value_range[1]:g}] (no mean/std), "
            f"{self.num_frames} frames at {self.fps:g} fps, {self.size}x{self.size} centre crop"
        )


# Where the published files can be had, tried in this order (after the user's own mirrors, see
# milnce.mirrors): the author's page, the community Google Drive copies (weights, word list), and
# the original address, dead since mid-2024, kept last in case it comes back.
_BASE = "https://www.di.ens.fr/~miech/S3D_howto100m/"
_DRIVE = ("https://drive.google.com/file/d/1DN8t1feS0t5hYYTfXQfZd596Pu9yXJIr/view "
          "https://drive.google.com/file/d/1p_CMGppAQk3B0_Z0i1r2AN_D1FM3kUFW/view")
_ORIGINAL = "https://www.rocq.inria.fr/cluster-willow/amiech/howto100m/"

REGISTRY: dict[str, WeightsInfo] = {
    "s3d_howto100m": WeightsInfo(
        name="s3d_howto100m",
        url=_BASE + "s3d_howto100m.pth",
        vocab_url=_BASE + "s3d_dict.npy",
        filename="s3d_howto100m.pth",
        vocab_filename="s3d_dict.npy",
        num_bytes=125_031_128,
        vocab_num_bytes=5_830_040,
        vocab_words=VOCAB_SIZE - 1,
        mirrors=(_DRIVE, _ORIGINAL),
        description="S3D-G text-video model trained from scratch on HowTo100M with MIL-NCE (Miech et al., CVPR 2020)",
        results={
            "youcook2_val_zero_shot": {"R@1": 15.1, "R@5": 38.0, "R@10": 51.2, "MedR": 10},
            "msrvtt_1k_zero_shot": {"R@1": 9.9, "R@5": 24.0, "R@10": 32.4, "MedR": 29.5},
            "hmdb51_linear_mixed_5c_top1": {"min": 53.1, "max": 54.8},
            "ucf101_linear_mixed_5c_top1": {"min": 82.7, "max": 83.4},
            "crosstask_zero_shot_recall": {"avg": 40.5},
        },
    ),
}
DEFAULT_WEIGHTS = "s3d_howto100m"


@dataclass(frozen=True)
class CheckpointSpec:
    """What a checkpoint's weights say about the network that fits them."""

    space_to_depth: bool
    vocab_size: int  # rows of the word embedding (words + 1)
    embed_dim: int
    word_dim: int


def expected_shapes(space_to_depth: bool = True, vocab_size: int = VOCAB_SIZE, embed_dim: int = 512) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a state dict of the given variant (``state_dict.tsv`` for the defaults).

    Computed from the architecture table, without building a network."""
    return state_dict_shapes(space_to_depth, vocab_size, embed_dim)


def _read_file(path: str) -> dict:
    if path.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=_is_zip(path))
    except Exception as exc:  # zipfile, EOF, unpickling and runtime errors all mean "unusable file"
        msg = str(exc)
        code = integrity.pickled_globals(path) if "GLOBAL" in msg or "WeightsUnpickler" in msg else []
        if "GLOBAL" in msg or code:
            named = f" (it names {', '.join(code[:3])})" if code else ""
            raise CheckpointError(
                f"{path}: contains pickled Python objects / code{named}, refused (not a plain tensor checkpoint): "
                "loading it could run arbitrary code. If you trust it, convert it on a trusted machine with "
                "torch.save(state_dict, out) or `milnce convert`."
            ) from exc
        size = os.path.getsize(path)
        detail = msg.strip().splitlines()[0][:200] if msg.strip() else type(exc).__name__
        raise CheckpointError(
            f"{path}: cannot read the checkpoint ({size:,} bytes): the file is truncated or corrupt, or not a "
            f"PyTorch checkpoint (the published s3d_howto100m.pth is {REGISTRY[DEFAULT_WEIGHTS].num_bytes:,} bytes). "
            f"Detail: {detail}"
        ) from exc
    return obj


def _is_zip(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"PK\x03\x04"
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read the weights file: {exc.strerror or exc}") from exc


def _unwrap(obj: object, path: str) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]  # MIL-NCE training checkpoint
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{path}: expected a state dict (mapping of names to tensors), got {type(obj).__name__}")
    sd: dict[str, torch.Tensor] = {}
    for k, v in obj.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            raise CheckpointError(f"{path}: entry {k!r} is {type(v).__name__}, expected a tensor")
        for prefix in ("module.", "_orig_mod."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        sd[k] = v
    return sd


def inspect_state_dict(sd: dict[str, torch.Tensor], source: str = "checkpoint", check_finite: bool = True) -> CheckpointSpec:
    """Check keys and shapes (and, with ``check_finite``, that no value is NaN/inf) against the S3D
    text-video model; say exactly what is wrong."""
    w1 = sd.get("conv1.conv1.weight")
    emb = sd.get("text_module.word_embd.weight")
    fc = sd.get("fc.weight")
    known = set(expected_shapes(True)) | set(expected_shapes(False))
    overlap = len(known & set(sd))
    if w1 is None or emb is None or fc is None or overlap < len(known) // 2:
        sample = ", ".join(list(sd)[:5])
        raise CheckpointError(
            f"{source}: this is not an S3D text-video (MIL-NCE) checkpoint: only {overlap} of its {len(sd)} keys "
            f"match the model (first keys: {sample})"
        )
    if w1.ndim != 5 or emb.ndim != 2 or fc.ndim != 2:
        raise CheckpointError(f"{source}: conv1/word_embd/fc weights have unexpected ranks")
    s2d = w1.shape[1] == 24
    spec = CheckpointSpec(space_to_depth=s2d, vocab_size=int(emb.shape[0]), embed_dim=int(fc.shape[0]), word_dim=int(emb.shape[1]))
    expected = expected_shapes(s2d, spec.vocab_size, spec.embed_dim)
    if spec.word_dim != expected["text_module.word_embd.weight"][1]:
        raise CheckpointError(f"{source}: word embedding has {spec.word_dim} dims, expected 300")
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    wrong = [f"{k}: {tuple(sd[k].shape)} (expected {expected[k]})" for k in expected if k in sd and tuple(sd[k].shape) != expected[k]]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:4])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:4])})")
    if wrong:
        problems.append(f"{len(wrong)} wrong shapes (e.g. {'; '.join(wrong[:3])})")
    if problems:
        variant = "space_to_depth=True (published)" if s2d else "space_to_depth=False (training variant)"
        raise CheckpointError(f"{source}: does not match the {variant} S3D text-video model: " + "; ".join(problems))
    wrong_type = [f"{k} ({str(v.dtype).removeprefix('torch.')})" for k, v in sd.items()
                  if not (v.is_floating_point() or (k.endswith("num_batches_tracked") and not v.is_complex()))]
    if wrong_type:
        raise CheckpointError(f"{source}: {len(wrong_type)} tensors are not real floating-point numbers "
                              f"(e.g. {', '.join(wrong_type[:3])}): not weights of this model")
    bad = [k for k, v in sd.items() if check_finite and v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"{source}: non-finite values (NaN/inf) in {', '.join(bad[:4])}")
    return spec


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], CheckpointSpec]:
    """Load and validate weights from ``.pth``/``.pt`` (plain or training) or ``.safetensors``.

    The file is verified (zip CRCs, keys, shapes, finite values, a bundle's fingerprint) on its
    first load; the verdict is cached by path, size and mtime, see :mod:`milnce.integrity`."""
    ckpt = load_verified(path)
    return ckpt.state_dict, ckpt.spec


@dataclass(frozen=True)
class VerifiedCheckpoint:
    """A loaded, validated checkpoint and the content fingerprint of its weights."""

    path: str
    state_dict: dict[str, torch.Tensor]
    spec: CheckpointSpec
    fingerprint: str
    cached: bool  # True when the verdict came from the cache (the file was not re-read)


def resolve_weights_file(path: str | os.PathLike[str]) -> str:
    """The weights file of ``path`` (a bundle folder gives its ``model.safetensors``)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise MissingFileError(f"weights file not found: {path}")
    run_checkpoint = find_run_checkpoint(path) if os.path.isdir(path) else None
    if run_checkpoint is not None:
        path = os.fspath(run_checkpoint)
    elif os.path.isdir(path):
        candidates = [p for p in ("model.safetensors", "s3d_howto100m.pth") if os.path.exists(os.path.join(path, p))]
        if not candidates:
            raise CheckpointError(f"{path} is a directory without model.safetensors or s3d_howto100m.pth")
        path = os.path.join(path, candidates[0])
    return path


def load_verified(path: str | os.PathLike[str]) -> VerifiedCheckpoint:
    """Load ``path`` like :func:`load_checkpoint`, reusing the cached verdict of an unchanged file."""
    path = resolve_weights_file(path)
    st = os.stat(path)
    if st.st_size == 0:
        raise CheckpointError(f"{path}: the file is empty (an interrupted download?)")
    verdict = integrity.cached_verdict(path, st)
    is_zip = _is_zip(path)
    if verdict is None and is_zip:
        problem = integrity.zip_problem(path)
        if problem is not None:
            raise CheckpointError(
                f"{path}: the file is corrupt: {problem}: its bytes changed after it was written "
                "(a disk or transfer error). Download or copy it again."
            )
    sd = _unwrap(_read_file(path), path)
    sd = {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}
    spec = inspect_state_dict(sd, path, check_finite=verdict is None)
    if verdict is not None and isinstance(verdict.get("fingerprint"), str):
        return VerifiedCheckpoint(path, sd, spec, verdict["fingerprint"], cached=True)
    fp = fingerprint(sd)
    _check_bundle_config(path, fp, spec)
    integrity.record_verdict(path, st, {"fingerprint": fp, "zip_crc": is_zip, "finite": True})
    return VerifiedCheckpoint(path, sd, spec, fp, cached=False)


def _check_bundle_config(path: str, fp: str, spec: CheckpointSpec) -> None:
    """A bundle's ``model.safetensors`` must still have the fingerprint its ``config.json`` recorded."""
    if os.path.basename(path) != "model.safetensors":
        return
    try:
        with open(os.path.join(os.path.dirname(path), "config.json"), encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError):
        return
    want = config.get("fingerprint") if isinstance(config, dict) else None
    if isinstance(want, str) and want != fp:
        raise CheckpointError(
            f"{path}: the weights changed since the bundle was written (fingerprint {fp} instead of {want} "
            "in config.json): the file is damaged; convert it again"
        )


def fingerprint(sd: dict[str, torch.Tensor]) -> str:
    """A short content hash of the weights (independent of file format), e.g. to tag an index."""
    h = hashlib.sha256()
    for k in sorted(sd):
        if k.endswith("num_batches_tracked"):
            continue
        v = sd[k].detach().to("cpu", torch.float32).contiguous()
        h.update(k.encode())
        h.update(memoryview(v.reshape(-1).numpy()).cast("B"))  # type: ignore[arg-type]  # no copy
    return h.hexdigest()[:16]


def check_bundle_target(out_dir: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Raise ``UsageError`` unless a bundle may be written to ``out_dir`` (new or empty folder,
    or an existing bundle with ``overwrite``)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} exists and is not a folder: choose a new folder name for the bundle")
    present = [n for n in ("model.safetensors", "vocab.npy", "config.json") if (out / n).exists()]
    if present and not overwrite:
        raise UsageError(f"{out} already holds a bundle ({', '.join(present)}); pass --overwrite (overwrite=True) "
                         "to replace it, or choose another folder")
    return out


def save_bundle(sd: dict[str, torch.Tensor], vocab: np.ndarray, out_dir: str | os.PathLike[str],
                info: WeightsInfo | None = None, *, overwrite: bool = False) -> Path:
    """Write a pickle-free bundle: ``model.safetensors``, ``vocab.npy`` and ``config.json`` (with the
    input conventions of ``info``, default the published weights', which ``bundle_info`` reads back).

    ``out_dir`` is created if needed; an existing bundle there is replaced only with ``overwrite=True``."""
    from safetensors.torch import save

    out = check_bundle_target(out_dir, overwrite=overwrite)
    spec = inspect_state_dict(sd)
    if len(vocab) + 1 != spec.vocab_size:
        raise CheckpointError(f"vocabulary has {len(vocab)} words but the weights expect {spec.vocab_size - 1}")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(out, exc) from exc
    tensors = {k: v.contiguous() for k, v in sd.items()}
    # atomic writes with the umask's permissions (safetensors' own save_file creates files 0600)
    atomic_write_bytes(out / "model.safetensors", save(tensors, metadata={"format": "pt", "model": "milnce-s3d"}))
    buf = io.BytesIO()
    np.save(buf, np.asarray(vocab, dtype=str), allow_pickle=False)
    with atomic_file(out / "vocab.npy") as f:
        f.write(buf.getbuffer())
    config = {
        "space_to_depth": spec.space_to_depth,
        "vocab_size": spec.vocab_size,
        "embed_dim": spec.embed_dim,
        "fingerprint": fingerprint(sd),
        "inputs": _inputs(info or REGISTRY[DEFAULT_WEIGHTS]),
    }
    atomic_write_text(out / "config.json", json.dumps(config, indent=2) + "\n")
    return out


_INPUT_FIELDS = ("num_frames", "fps", "size", "value_range")


def _inputs(info: WeightsInfo) -> dict[str, object]:
    return {"weights": info.name, **{k: getattr(info, k) for k in _INPUT_FIELDS}}


def bundle_info(path: str | os.PathLike[str]) -> WeightsInfo | None:
    """The input conventions a bundle folder's ``config.json`` records (``milnce convert``), as a
    ``WeightsInfo`` (the registry entry it came from, with the recorded values), or None."""
    p = Path(path)
    config = p / "config.json" if p.is_dir() else p.parent / "config.json"
    try:
        inputs = json.loads(config.read_text()).get("inputs")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(inputs, dict):
        return None
    base = REGISTRY.get(str(inputs.get("weights")), REGISTRY[DEFAULT_WEIGHTS])
    try:
        values = {k: inputs[k] for k in _INPUT_FIELDS if k in inputs}
        if "value_range" in values:
            values["value_range"] = tuple(float(v) for v in values["value_range"])
        return replace(base, **values)
    except (TypeError, ValueError):
        return None


_RUN_CHECKPOINT = re.compile(r"step_(\d+)\.pt")


def find_run_checkpoint(folder: str | os.PathLike[str]) -> Path | None:
    """The newest ``checkpoints/step_N.pt`` of a ``milnce train`` run folder; None when ``folder``
    is not a run (no ``checkpoints/``), ``CheckpointError`` when the run has no checkpoint yet."""
    ckdir = Path(folder) / "checkpoints"
    if not ckdir.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in ckdir.iterdir() if (m := _RUN_CHECKPOINT.fullmatch(p.name))]
    if not found:
        raise CheckpointError(f"{folder}: a training run without any checkpoint yet")
    return max(found)[1]


def run_weights_info(folder: str | os.PathLike[str]) -> WeightsInfo | None:
    """The input conventions a ``milnce train`` run was trained with (from ``RUN/config.json``)."""
    folder = Path(folder)
    if not folder.is_dir() or not (folder / "config.json").is_file() or find_run_checkpoint(folder) is None:
        return None
    try:
        cfg = json.loads((folder / "config.json").read_text())
        return WeightsInfo(
            name=f"run:{folder.name}", url="", vocab_url="", filename=str(find_run_checkpoint(folder)),
            vocab_filename="vocab.npy", num_bytes=0, vocab_num_bytes=0, vocab_words=0,
            space_to_depth=bool(cfg.get("space_to_depth", True)), num_frames=int(cfg["num_frames"]),
            fps=float(cfg["fps"]), size=int(cfg["size"]), description=f"trained with milnce train ({folder})",
        )
    except (KeyError, TypeError, ValueError, json.JSONDecodeError):
        return None
