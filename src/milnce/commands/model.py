"""Model commands: download, info, embed-text, similarity, convert."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys

import numpy as np

from ..cli import CommandError, add_model_options, model_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("download", help="fetch the published weights and vocabulary into the cache",
                       description="Download the published weights and word list into $MILNCE_HOME "
                       "(default ~/.cache/milnce), resuming partial files, and verify them.")
    p.add_argument("name", nargs="?", default=None, help="registry name (default: s3d_howto100m)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("info", help="versions, cache folder and weights status")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("embed-text", help="embed sentences into the 512-d joint space",
                       description="Embed sentences with the text tower. Prints a summary, or saves "
                       "an N x 512 float32 .npy with --out, or prints JSON with --json.")
    p.add_argument("text", nargs="+", help="sentences (quote each one)")
    p.add_argument("--out", help="write the embeddings to this .npy file")
    p.add_argument("--json", action="store_true", help="print texts, known words and embeddings as JSON")
    add_model_options(p)
    p.set_defaults(func=cmd_embed_text)

    p = sub.add_parser("similarity", help="score sentences against saved video embeddings",
                       description="Dot-product scores of sentences against video embeddings saved by "
                       "'milnce extract'/'embed-video' (.npz with 'video_embedding') or a plain N x 512 .npy.")
    p.add_argument("--text", nargs="+", required=True, help="sentences")
    p.add_argument("--video-embeddings", nargs="+", required=True, help=".npy or .npz files")
    p.add_argument("--json", action="store_true", help="print JSON")
    add_model_options(p)
    p.set_defaults(func=cmd_similarity)

    p = sub.add_parser("convert", help="write a pickle-free safetensors + vocabulary bundle",
                       description="Convert a .pth (published or training checkpoint) into a folder with "
                       "model.safetensors, vocab.npy and config.json, loadable with --weights FOLDER.")
    p.add_argument("out", help="output folder")
    p.add_argument("--weights", help="input weights (default: the cached published weights)")
    p.add_argument("--vocab", help="input vocabulary .npy")
    p.add_argument("--no-download", action="store_true")
    p.set_defaults(func=cmd_convert)


def cmd_download(args: argparse.Namespace) -> int:
    from ..download import DownloadError, ensure_weights
    from ..weights import DEFAULT_WEIGHTS, REGISTRY

    name = args.name or DEFAULT_WEIGHTS
    if name not in REGISTRY:
        raise CommandError(f"unknown weights {name!r}; known: {', '.join(REGISTRY)}")
    try:
        w, v = ensure_weights(REGISTRY[name], progress=not args.quiet)
    except DownloadError as exc:
        raise CommandError(str(exc)) from exc
    print(f"weights: {w}\nvocab:   {v}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    import torch

    from .. import __version__
    from ..download import cache_dir
    from ..weights import REGISTRY

    cache = cache_dir()
    weights = {}
    for name, info in REGISTRY.items():
        entry = {}
        for label, fname, size in (("weights", info.filename, info.num_bytes), ("vocab", info.vocab_filename, info.vocab_num_bytes)):
            path = cache / fname
            if path.exists():
                have = path.stat().st_size
                entry[label] = f"{path} ({have:,} bytes{'' if have == size else f', expected {size:,}'})"
            else:
                entry[label] = f"not downloaded (expected {size:,} bytes from {info.url if label == 'weights' else info.vocab_url})"
        entry["inputs"] = info.transforms
        weights[name] = entry
    report = {
        "milnce": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "cache": str(cache),
        "MILNCE_WEIGHTS": os.environ.get("MILNCE_WEIGHTS"),
        "MILNCE_VOCAB": os.environ.get("MILNCE_VOCAB"),
        "weights": weights,
    }
    try:
        import av

        report["av"] = av.__version__
    except ImportError:
        report["av"] = None
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    for k, v in report.items():
        if k != "weights":
            print(f"{k:15s} {v}")
    for name, entry in weights.items():
        print(f"\n[{name}]")
        for k, v in entry.items():
            print(f"  {k:8s} {v}")
    return 0


def cmd_embed_text(args: argparse.Namespace) -> int:
    model = model_from_args(args)
    texts = list(args.text)
    if any(not t.strip() for t in texts):
        print("milnce: warning: empty text gets the all-padding embedding", file=sys.stderr)
    emb = model.encode_text(texts).cpu().numpy().astype(np.float32)
    if args.out:
        np.save(args.out, emb, allow_pickle=False)
    if args.json:
        rows = [{"text": t, "words": model.tokenizer.words(t), "unknown": model.tokenizer.unknown_words(t),
                 "embedding": e.tolist()} for t, e in zip(texts, emb)]
        print(json.dumps(rows))
    elif not args.out:
        for t, e in zip(texts, emb):
            words = model.tokenizer.words(t)
            print(f"{t!r}: {len(words)} known words {words}, |e|={np.linalg.norm(e):.3f}, e[:4]={np.round(e[:4], 4).tolist()}")
    else:
        print(f"wrote {emb.shape[0]} x {emb.shape[1]} embeddings to {args.out}")
    return 0


def _load_video_embeddings(path: str) -> tuple[np.ndarray, list[str]]:
    if not os.path.exists(path):
        raise FileNotFoundError(f"video embeddings not found: {path}")
    data = np.load(path, allow_pickle=False)
    if isinstance(data, np.lib.npyio.NpzFile):
        # milnce extract / embed-video files (video_embedding, start, end) or the older layout
        key = "video_embedding" if "video_embedding" in data else "embeddings"
        if key not in data:
            raise CommandError(f"{path}: .npz without a 'video_embedding' array (keys: {', '.join(data.files)})")
        emb = data[key]
        starts = data["start"] if "start" in data else data["starts"] if "starts" in data else np.arange(len(emb))
        ends = data["end"] if "end" in data else data["ends"] if "ends" in data else starts
        labels = [f"{os.path.basename(path)}[{s:.1f}-{e:.1f}s]" for s, e in zip(starts, ends)]
    else:
        emb = data
        if emb.ndim == 1:
            emb = emb[None]
        labels = [f"{os.path.basename(path)}[{i}]" for i in range(len(emb))]
    if emb.ndim != 2:
        raise CommandError(f"{path}: expected an N x D array of embeddings, got shape {emb.shape}")
    return emb.astype(np.float32), labels


def cmd_similarity(args: argparse.Namespace) -> int:
    vids, labels = [], []
    for path in args.video_embeddings:
        e, lab = _load_video_embeddings(path)
        vids.append(e)
        labels += lab
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
    from ..api import resolve_files
    from ..text import load_vocab
    from ..weights import load_checkpoint, save_bundle

    wpath, vpath, _ = resolve_files(args.weights, args.vocab, download=not args.no_download)
    sd, spec = load_checkpoint(wpath)
    out = save_bundle(sd, load_vocab(vpath), args.out)  # type: ignore[arg-type]
    variant = "space_to_depth" if spec.space_to_depth else "no space_to_depth"
    print(f"wrote {out}/model.safetensors, vocab.npy, config.json ({variant}, {spec.vocab_size - 1} words)")
    return 0
