"""High-level API: ``milnce.load_model()`` and the ``MILNCE`` model wrapper."""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple, overload

import numpy as np
import torch
from torch import nn

from .cache import cache_dir
from .download import ensure_weights, verify_cached_file
from .errors import MissingFileError, UsageError
from .model import S3D, check_video_input
from .runoptions import check_device
from .text import Tokenizer, load_vocab
from .weights import (
    DEFAULT_WEIGHTS,
    REGISTRY,
    CheckpointError,
    WeightsInfo,
    bundle_info,
    fingerprint,
    load_verified,
    run_weights_info,
)

__all__ = ["MILNCE", "VideoOutput", "load_model", "resolve_files", "check_device", "Precision"]

Precision = Literal["fp32", "bf16"]


class VideoOutput(NamedTuple):
    """``encode_video(..., features=True)``: ``embedding`` (``B x 512``) and ``features`` (mixed_5c,
    ``B x 1024``). Unpacks as ``emb, feats = ...``."""

    embedding: torch.Tensor
    features: torch.Tensor


_BUILD_LOCK = threading.Lock()  # one lazy build of a model's fast video path at a time


class MILNCE(nn.Module):
    """The text-video model ready for inference.

    ``net`` is the exact eager network (``milnce.S3D``); ``video_net`` is the fast inference
    path built from it (the default), or ``net`` itself with ``fast=False``. The fast path is
    built on first use (``encode_video``, ``forward`` or reading ``video_net``), so a model that
    only embeds text never pays for it.
    """

    def __init__(
        self,
        net: S3D,
        *,
        fast: bool = True,
        precision: Precision = "fp32",
        info: WeightsInfo | None = None,
        weights_id: str | None = None,
    ) -> None:
        super().__init__()
        if precision not in ("fp32", "bf16"):
            raise UsageError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
        self.net = net.eval()
        self.precision = precision
        self.info = info or REGISTRY[DEFAULT_WEIGHTS]
        self.weights_id = weights_id or fingerprint(net.state_dict())
        # where load_model found the weights ({"kind": "registry"|"file"|"run", "weights": name or
        # absolute path, "vocab": absolute path or None}); an index records it (milnce.index.source)
        self.weights_source: dict[str, str | None] | None = None
        self.fast = fast
        if not fast:  # a registered submodule, read by the property below
            self._modules["video_net"] = self.net if precision == "fp32" else _Autocast(self.net)

    @property
    def video_net(self) -> nn.Module:  # type: ignore[override]
        """The network ``encode_video`` runs (with ``fast=True`` built on first access)."""
        built = self._modules.get("video_net")
        if built is None:
            with _BUILD_LOCK:
                built = self._modules.get("video_net")
                if built is None:
                    from .fast import FastVideoNet

                    with torch.inference_mode(False):  # normal tensors, even when first used under inference mode
                        built = FastVideoNet(self.net, precision=self.precision)
                    self._modules["video_net"] = built
        return built

    @property
    def tokenizer(self) -> Tokenizer:
        tok = self.net.text_module.tokenizer
        assert tok is not None
        return tok

    @property
    def device(self) -> torch.device:
        return self.net.fc.weight.device

    @property
    def space_to_depth(self) -> bool:
        return self.net.space_to_depth

    @overload
    def encode_video(self, video: torch.Tensor, features: Literal[False] = False, batch_size: int = 8
                     ) -> torch.Tensor: ...

    @overload
    def encode_video(self, video: torch.Tensor, features: Literal[True], batch_size: int = 8) -> VideoOutput: ...

    @overload
    def encode_video(self, video: torch.Tensor, features: bool = False, batch_size: int = 8
                     ) -> torch.Tensor | VideoOutput: ...

    def encode_video(
        self, video: torch.Tensor, features: bool = False, batch_size: int = 8
    ) -> torch.Tensor | VideoOutput:
        """``B x 3 x T x H x W`` RGB in [0, 1] (float, or uint8 divided by 255 here) -> ``B x 512``.

        With ``features=True`` returns ``VideoOutput(embedding, features)`` (``B x 512``, mixed_5c
        ``B x 1024``), a named tuple.
        """
        video_net = self.video_net  # built on first use, outside inference mode
        with torch.inference_mode():
            # uint8 goes to the device as bytes (4x less to copy) and is scaled there, chunk by chunk;
            # its range needs no check (the shape check sees an empty float view)
            uint8 = isinstance(video, torch.Tensor) and video.dtype == torch.uint8
            check_video_input(video[:0].float() if uint8 and video.ndim else video, self.space_to_depth)
            if video.shape[0] == 0:
                raise UsageError("empty batch: video has 0 clips")
            embs, feats = [], []
            for chunk in video.split(batch_size):
                chunk = chunk.to(self.device, non_blocking=True)
                out = video_net(chunk.float().div_(255) if uint8 else chunk)
                embs.append(out["video_embedding"].float())
                feats.append(out["mixed_5c"].float())
            emb = torch.cat(embs)
            return VideoOutput(emb, torch.cat(feats)) if features else emb

    def encode_text(self, texts: Sequence[str] | str) -> torch.Tensor:
        """Sentences -> ``B x 512`` text embeddings. A single string is taken as one sentence.

        Each sentence is embedded on its own (the same one-row matrix products whatever the batch),
        so a sentence's embedding, and every score made from it, is bit for bit the same alone or
        among others: ``milnce search`` with several queries, the web API and ``localize`` agree."""
        # inference_mode as a context, not a decorator: the decorator's wrapper frame would make
        # the warning below point into torch instead of at the caller
        with torch.inference_mode():
            if isinstance(texts, str):
                texts = [texts]
            ids = self.tokenizer(texts)
            empty = [t for t, row in zip(texts, ids) if not bool(row.any())]
            if empty:
                warnings.warn(
                    f"{len(empty)} text(s) have no word in the vocabulary and get the all-padding embedding: "
                    + ", ".join(repr(t[:40]) for t in empty[:3]),
                    stacklevel=2,
                )
            ids = ids.to(self.device)
            tower = self.net.text_module
            return torch.cat([tower(ids[i:i + 1])["text_embedding"] for i in range(len(ids))])

    @staticmethod
    def similarity(text_embedding: torch.Tensor, video_embedding: torch.Tensor) -> torch.Tensor:
        """Raw dot products ``text @ video.T`` (the paper's score; no normalisation)."""
        return text_embedding @ video_embedding.T

    def encode_video_file(self, path: str | os.PathLike[str], **kwargs):  # type: ignore[no-untyped-def]
        """Embed every window of a video file; see ``milnce.video.encode_video_file``."""
        from .video import encode_video_file

        return encode_video_file(self, path, **kwargs)

    def forward(self, video: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.video_net(video)

    def state_dict(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        """The checkpoint: the exact network's tensors (``net``), without the ``net.`` prefix and
        without the fast path's folded copies (they are rebuilt from these)."""
        return self.net.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        """Load a checkpoint into ``net`` (as ``milnce.load_checkpoint`` returns it) and rebuild the
        fast path from it."""
        result = self.net.load_state_dict(state_dict, strict=strict, assign=assign)
        self.weights_id = fingerprint(self.net.state_dict())
        if self.fast:  # the fast path is rebuilt from the new weights on next use
            self._modules.pop("video_net", None)
        return result


class _Autocast(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, video: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.autocast(video.device.type, dtype=torch.bfloat16):
            out = self.net(video)
        return {k: v.float() for k, v in out.items()}


def env_path(name: str) -> str | None:
    """The path in environment variable ``name`` (None when unset or empty)."""
    value = os.environ.get(name)
    return value or None


def resolve_files(
    weights: str | os.PathLike[str] | None = None,
    vocab: str | os.PathLike[str] | None = None,
    download: bool = True,
    progress: bool = True,
    need_vocab: bool = True,
) -> tuple[Path, Path | None, WeightsInfo | None]:
    """Find the weights and vocabulary files: arguments, then ``MILNCE_WEIGHTS``/``MILNCE_VOCAB``,
    then the cache (``$MILNCE_HOME``, default ``~/.cache/milnce``), downloading if allowed.

    A bundle or run folder's own ``vocab.npy`` comes before ``MILNCE_VOCAB`` (the variable is for
    weights without a vocabulary of their own); a folder never takes its parent's word list."""
    weights = weights or env_path("MILNCE_WEIGHTS")
    info: WeightsInfo | None = None
    if weights is None or str(weights) in REGISTRY:
        vocab = vocab or env_path("MILNCE_VOCAB")
        info = REGISTRY[str(weights) if weights else DEFAULT_WEIGHTS]
        cached_w, cached_v = cache_dir() / info.filename, cache_dir() / info.vocab_filename
        if download:
            w, v = ensure_weights(info, progress=progress)
            return w, Path(vocab) if vocab else v, info
        missing = [str(p) for p in (cached_w, None if vocab else cached_v) if p is not None and not p.exists()]
        if missing:
            raise MissingFileError(
                f"the published weights are not in the cache (missing {', '.join(missing)}) and downloading is off; "
                "pass --weights/--vocab (or set MILNCE_WEIGHTS/MILNCE_VOCAB) to local files, or run `milnce download`"
            )
        for path in (cached_w, None if vocab else cached_v):
            if path is not None:  # checked against the sha256 recorded at download (re-hashed only if touched)
                verify_cached_file(path)
        return cached_w, Path(vocab) if vocab else cached_v, info
    wpath = Path(weights)
    if not wpath.exists():
        raise MissingFileError(f"weights file not found: {wpath}")
    if vocab is None and need_vocab:
        vocab = _own_vocab(wpath) or env_path("MILNCE_VOCAB") or _sibling_vocab(wpath)
        if vocab is None:
            cached = cache_dir() / REGISTRY[DEFAULT_WEIGHTS].vocab_filename
            if not cached.is_file():
                raise MissingFileError(
                    f"no vocabulary found for {wpath}: pass vocab= (--vocab) or set MILNCE_VOCAB "
                    "(the published word list is s3d_dict.npy)"
                )
            vocab = cached
    if info is None and wpath.is_dir():  # a `milnce train` run folder: its window settings
        info = run_weights_info(wpath)
    return wpath, Path(vocab) if vocab is not None else None, info


def _own_vocab(wpath: Path) -> Path | None:
    """The word list that belongs to the weights: a bundle or run folder's ``vocab.npy`` (also for
    ``BUNDLE/model.safetensors`` and ``RUN/checkpoints/step_N.pt``)."""
    if wpath.is_dir():
        return next((c for c in (wpath / "vocab.npy", wpath / "s3d_dict.npy") if c.is_file()), None)
    if wpath.name == "model.safetensors":
        cand = wpath.parent / "vocab.npy"
    elif wpath.parent.name == "checkpoints":
        cand = wpath.parent.parent / "vocab.npy"
    else:
        return None
    return cand if cand.is_file() else None


def _sibling_vocab(wpath: Path) -> Path | None:
    """A word list beside a plain weights file (never for a folder: not its parent's)."""
    if wpath.is_dir():
        return None
    for cand in (wpath.parent / "vocab.npy", wpath.parent / "s3d_dict.npy"):
        if cand.is_file():
            return cand
    return None


def load_model(
    weights: str | os.PathLike[str] | None = None,
    vocab: str | os.PathLike[str] | np.ndarray | Sequence[str] | None = None,
    device: str | torch.device = "cpu",
    *,
    fast: bool = True,
    precision: Precision = "fp32",
    download: bool = True,
    progress: bool = True,
) -> MILNCE:
    """Load the text-video model.

    ``weights``: a registry name (default ``"s3d_howto100m"``, fetched into the cache once),
    a ``.pth`` (published or MIL-NCE training checkpoint), a ``.safetensors`` file, a
    bundle folder from ``milnce convert``, or a ``milnce train`` run folder (its newest checkpoint,
    vocabulary and window settings). ``vocab``: the word list ``.npy`` (or the words).
    """
    device = check_device(device)
    words = None
    if vocab is not None and not isinstance(vocab, (str, os.PathLike)):
        words = np.asarray(vocab, dtype=str)
        vocab = None
    wpath, vpath, info = resolve_files(weights, vocab, download=download, progress=progress, need_vocab=words is None)
    if info is None:  # a bundle from ``milnce convert`` records its input conventions
        info = bundle_info(wpath)
    ckpt = load_verified(wpath)  # verified (zip CRCs, shapes, values) on first load, then cached
    sd, spec = ckpt.state_dict, ckpt.spec
    tokenizer = Tokenizer(words) if words is not None else Tokenizer(load_vocab(vpath))  # type: ignore[arg-type]
    if tokenizer.vocab_size != spec.vocab_size:
        raise CheckpointError(
            f"vocabulary {'(given words)' if words is not None else vpath} has {len(tokenizer)} words but the weights' "
            f"word embedding has {spec.vocab_size} rows ({spec.vocab_size - 1} words + padding): "
            "they do not belong together"
        )
    # Built on the meta device and given the loaded tensors (assign=True): no random init that
    # the weights would overwrite, no copy of the (memory-mapped) checkpoint.
    with torch.device("meta"):
        net = S3D(tokenizer, spec.embed_dim, space_to_depth=spec.space_to_depth)
    net.load_state_dict(sd, strict=True, assign=True)
    net = net.to(device).eval()
    model = MILNCE(net, fast=fast, precision=precision, info=info, weights_id=ckpt.fingerprint)
    model.weights_source = _weights_source(weights, vocab, wpath, vpath)
    return model


def _weights_source(weights: str | os.PathLike[str] | None, vocab: str | os.PathLike[str] | None, wpath: Path,
                    vpath: Path | None) -> dict[str, str | None]:
    """Where ``load_model`` found the weights and vocabulary (what an index records to load them again)."""
    given = weights or env_path("MILNCE_WEIGHTS")
    if given is None or str(given) in REGISTRY:  # the cache's word list is the registry's own: not recorded
        own_vocab = vocab or env_path("MILNCE_VOCAB")
        return {"kind": "registry", "weights": str(given or DEFAULT_WEIGHTS),
                "vocab": os.path.abspath(own_vocab) if own_vocab else None}
    return {"kind": "run" if wpath.is_dir() else "file", "weights": os.path.abspath(wpath),
            "vocab": os.path.abspath(vpath) if vpath is not None else None}
