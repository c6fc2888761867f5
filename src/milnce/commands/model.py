"""Model commands: download, info, embed-text, similarity, convert."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from typing import Any

import numpy as np

from ..atomic import atomic_file
from ..printable import show_path
from .common import CommandError, add_model_options, model_from_args

PRINT_DECIMALS = 4  # printed embeddings (text and JSON); files keep float32
EXTRAS = {  # import name -> distributions that provide it (first one installed is reported)
    "faiss": ("faiss-cpu", "faiss-gpu", "faiss"),
    "fastapi": ("fastapi",),
    "uvicorn": ("uvicorn",),
    "matplotlib": ("matplotlib",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
    "sklearn": ("scikit-learn",),
    "yaml": ("pyyaml", "PyYAML"),
    "av": ("av",),
    "safetensors": ("safetensors",),
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("download", help="fetch the published weights and vocabulary into the cache",
                       description="Download the published weights and word list into $MILNCE_HOME "
                       "(default ~/.cache/milnce), resuming partial files, and verify them.")
    p.add_argument("name", nargs="?", default=None, metavar="NAME", help="registry name (default: s3d_howto100m)")
    p.add_argument("--from", dest="sources", action="append", metavar="FILE|URL",
                   help="check a copy you already have (the weights file, the word list, a folder with both, "
                   "or a URL of one file) like a download and put it into the cache (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("info", help="versions, cache folder and weights status")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("embed-text", help="embed sentences into the 512-d joint space",
                       description="Embed sentences with the text tower. Prints a summary, or saves "
                       "an N x 512 float32 .npy with --out, or prints JSON with --json.")
    p.add_argument("text", nargs="+", metavar="TEXT", help="sentences (quote each one)")
    p.add_argument("--out", metavar="FILE", help="write the full-precision embeddings to this .npy file (.npy is appended if "
                   "missing; an existing folder gets text_embeddings.npy inside)")
    p.add_argument("--json", action="store_true", help="print texts, known words and embeddings as JSON "
                   f"(values rounded to {PRINT_DECIMALS} decimals; --out keeps full precision)")
    add_model_options(p)
    p.set_defaults(func=cmd_embed_text)

    p = sub.add_parser("similarity", help="score sentences against saved video embeddings",
                       description="Dot-product scores of sentences against video embeddings saved by "
                       "'milnce extract'/'embed-video' (.npz with 'video_embedding') or a plain N x 512 .npy.")
    p.add_argument("--text", nargs="+", required=True, metavar="TEXT", help="sentences")
    p.add_argument("--video-embeddings", nargs="+", required=True, metavar="FILE", help=".npy or .npz files")
    p.add_argument("--json", action="store_true", help="print JSON")
    add_model_options(p)
    p.set_defaults(func=cmd_similarity)

    p = sub.add_parser("convert", help="write a pickle-free safetensors + vocabulary bundle",
                       description="Convert a .pth (published or training checkpoint) into a folder with "
                       "model.safetensors, vocab.npy and config.json, loadable with --weights FOLDER.")
    p.add_argument("out", metavar="DIR", help="output folder")
    p.add_argument("--weights", help="input weights (default: the cached published weights)")
    p.add_argument("--vocab", help="input vocabulary .npy")
    p.add_argument("--no-download", action="store_true")
    p.add_argument("--overwrite", action="store_true", help="replace a bundle already in the output folder")
    p.add_argument("--device", default="cpu", help="accepted like every model command's and checked; the bundle "
                   "itself holds CPU tensors whatever the device (default: cpu)")
    p.set_defaults(func=cmd_convert)


def cmd_download(args: argparse.Namespace) -> int:
    from ..download import ensure_weights
    from ..weights import DEFAULT_WEIGHTS, REGISTRY

    name = args.name or DEFAULT_WEIGHTS
    if name not in REGISTRY:
        raise CommandError(f"unknown weights {name!r}; known: {', '.join(REGISTRY)}")
    if args.sources:
        from ..download import install_from

        for source in args.sources:
            for path in install_from(REGISTRY[name], source, progress=not args.quiet):
                print(f"verified: {show_path(str(path))}")
        return 0
    w, v = ensure_weights(REGISTRY[name], progress=not args.quiet)
    print(f"weights: {show_path(str(w))}\nvocab:   {show_path(str(v))}")
    return 0


def _extras() -> dict[str, str | None]:
    """Installed version of each optional dependency (None if missing), without importing it."""
    from importlib import metadata
    from importlib.util import find_spec

    found: dict[str, str | None] = {}
    for module, dists in EXTRAS.items():
        version = None
        for dist in dists:
            try:
                version = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
        if version is None and find_spec(module) is not None:
            version = "installed (version unknown)"
        found[dists[0] if module != "sklearn" else "scikit-learn"] = version
    return found


def _check_env_file(kind: str, value: str | None) -> str | None:
    """What ``MILNCE_WEIGHTS``/``MILNCE_VOCAB`` points at: size and whether it loads and verifies."""
    if not value:
        return None
    from ..text import VocabularyError, load_vocab
    from ..weights import REGISTRY, CheckpointError, load_verified

    if kind == "weights" and value in REGISTRY:
        return f"{value} (registry name: the cached files below)"
    path = os.path.expanduser(value)
    if not os.path.exists(path):
        return f"{path}: MISSING (no such file or folder)"
    size = "" if os.path.isdir(path) else f"{os.path.getsize(path):,} bytes, "
    try:
        if kind == "weights":
            ckpt = load_verified(path)
            words = ckpt.spec.vocab_size - 1
            return f"{path} ({size}verified: {words:,} words, weights id {ckpt.fingerprint})"
        return f"{path} ({size}{len(load_vocab(path)):,} words)"
    except (CheckpointError, VocabularyError, OSError) as exc:
        return f"{path} ({size}NOT USABLE: {exc})"


def _cache_entry(path, size: int, url: str) -> str:  # type: ignore[no-untyped-def]
    from ..download import DownloadError, verify_cached_file

    if not path.exists():
        return f"not downloaded (expected {size:,} bytes from {url})"
    have = path.stat().st_size
    if have != size:
        return f"{path} ({have:,} bytes, expected {size:,}: not the published file)"
    try:
        verify_cached_file(path)
    except DownloadError as exc:
        return f"{path} ({have:,} bytes, DAMAGED: {exc})"
    except OSError as exc:
        return f"{path} ({have:,} bytes, unreadable: {exc})"
    return f"{path} ({have:,} bytes)"


def cmd_info(args: argparse.Namespace) -> int:
    import torch

    from .. import __version__
    from ..cache import cache_dir
    from ..weights import REGISTRY

    cache = cache_dir()
    weights = {}
    for name, info in REGISTRY.items():
        entry = {
            "weights": _cache_entry(cache / info.filename, info.num_bytes, info.url),
            "vocab": _cache_entry(cache / info.vocab_filename, info.vocab_num_bytes, info.vocab_url),
            "inputs": info.transforms,
            "sources": _sources(info),
        }
        weights[name] = entry
    env_weights, env_vocab = os.environ.get("MILNCE_WEIGHTS") or None, os.environ.get("MILNCE_VOCAB") or None
    report: dict[str, Any] = {
        "milnce": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "cache": str(cache),
        "MILNCE_WEIGHTS": _check_env_file("weights", env_weights),
        "MILNCE_VOCAB": _check_env_file("vocab", env_vocab),
        "extras": _extras(),
        "weights": weights,
    }
    report["av"] = report["extras"]["av"]  # kept at the top level for older readers of --json
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    for k, v in report.items():
        if k == "extras":
            print(f"{k:15s} " + ", ".join(f"{name} {ver or '-'}" for name, ver in v.items()))
        elif k not in ("weights", "av"):
            print(f"{k:15s} {v if v is not None else '(not set)'}")
    for name, entry in weights.items():
        print(f"\n[{name}]")
        for k, v in entry.items():
            lines = v if isinstance(v, list) else [v]
            for i, line in enumerate(lines):
                print(f"  {k if i == 0 else '':8s} {line}")
    return 0


def _sources(info: Any) -> list[str] | str:
    """Where missing files would be downloaded from, in order (``milnce.mirrors``)."""
    from ..mirrors import MirrorError, sources

    try:
        found = sources(info)
    except MirrorError as exc:
        return f"unusable mirror list: {exc}"
    return [s.weights_url + ("" if s.vocab_url.endswith("/" + info.vocab_filename) else f" + {s.vocab_url}")
            + f" ({s.origin})" for s in found]


def _write_npy(out: str, array: np.ndarray) -> str:
    """Write ``array`` atomically to ``out`` (``out/text_embeddings.npy`` for a folder; ``.npy``
    appended when missing, as numpy does) and return the path written."""
    path = os.path.join(out, "text_embeddings.npy") if os.path.isdir(out) else out
    if not path.endswith(".npy"):
        path += ".npy"
    with atomic_file(path) as f:
        np.save(f, array, allow_pickle=False)
    return path


def _rounded(e: np.ndarray) -> list[float]:
    return np.round(e.astype(np.float64), PRINT_DECIMALS).tolist()


def cmd_embed_text(args: argparse.Namespace) -> int:
    model = model_from_args(args)
    texts = list(args.text)
    if any(not t.strip() for t in texts):
        print("milnce: warning: empty text gets the all-padding embedding", file=sys.stderr)
    emb = model.encode_text(texts).cpu().numpy().astype(np.float32)
    written = _write_npy(args.out, emb) if args.out else None
    if args.json:
        rows = [{"text": t, "words": model.tokenizer.words(t), "unknown": model.tokenizer.unknown_words(t),
                 "embedding": _rounded(e)} for t, e in zip(texts, emb)]
        print(json.dumps(rows))
    elif not written:
        for t, e in zip(texts, emb):
            words = model.tokenizer.words(t)
            print(f"{t!r}: {len(words)} known words {words}, |e|={np.linalg.norm(e):.3f}, e[:4]={_rounded(e[:4])}")
    else:
        print(f"wrote {emb.shape[0]} x {emb.shape[1]} embeddings to {show_path(str(written))}")
    return 0


def _load_video_embeddings(path: str) -> tuple[np.ndarray, list[str]]:
    from ..video import EmbeddingsFileError, VideoWindows

    ve = VideoWindows.load(path)
    if len(ve) == 0:
        raise EmbeddingsFileError(f"{path}: holds no windows (nothing to score)")
    name = os.path.basename(path)
    if np.isfinite(ve.starts).all():
        labels = [f"{name}[{s:.1f}-{e:.1f}s]" for s, e in zip(ve.starts, ve.ends)]
    else:  # a plain .npy: no window times
        labels = [f"{name}[{i}]" for i in range(len(ve))]
    return ve.embeddings, labels


def cmd_similarity(args: argparse.Namespace) -> int:
    vids, labels = [], []
    for path in args.video_embeddings:
        e, names = _load_video_embeddings(path)
        vids.append(e)
        labels += names
    video = np.concatenate(vids)
    model = model_from_args(args)
    text = model.encode_text(list(args.text)).cpu().numpy()
    if video.shape[1] != text.shape[1]:
        raise CommandError(f"video embeddings have {video.shape[1]} dims but text embeddings {text.shape[1]}")
    scores = text @ video.T
    if args.json:
        print(json.dumps({"texts": list(args.text), "videos": labels, "scores": scores.round(5).tolist()}))
        return 0
    width = max(len(lab) for lab in labels)
    print(" " * width + "  " + "  ".join(f"{t[:12]:>12s}" for t in args.text))
    for j, lab in enumerate(labels):
        print(f"{lab:{width}s}  " + "  ".join(f"{scores[i, j]:12.3f}" for i in range(len(args.text))))
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from ..api import check_device, resolve_files
    from ..text import load_vocab
    from ..weights import bundle_info, check_bundle_target, load_checkpoint, save_bundle

    check_device(args.device)
    check_bundle_target(args.out, overwrite=args.overwrite)  # before reading 125 MB
    wpath, vpath, info = resolve_files(args.weights, args.vocab, download=not args.no_download)
    sd, spec = load_checkpoint(wpath)
    out = save_bundle(sd, load_vocab(vpath), args.out, info=info or bundle_info(wpath),  # type: ignore[arg-type]
                      overwrite=args.overwrite)
    variant = "space_to_depth" if spec.space_to_depth else "no space_to_depth"
    print(f"wrote {show_path(str(out))}/model.safetensors, vocab.npy, config.json ({variant}, {spec.vocab_size - 1} words)")
    return 0
