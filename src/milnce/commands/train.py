"""Training commands: train, make-synthetic."""

from __future__ import annotations

import argparse
import json
import sys

from ..printable import show_path
from .vocabulary import deprecated_alias

B = argparse.BooleanOptionalAction


def register(sub: argparse._SubParsersAction) -> None:
    _register_train(sub)
    _register_make_synthetic(sub)


def _register_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train or fine-tune the model with MIL-NCE (one process or torchrun)",
        description="Train S3D text-video with MIL-NCE on a HowTo100M-layout folder (train.csv "
        "video_id,video_path + captions/<video_id>.csv start,end,text; val.csv held out) or a "
        "video_path,start,end,text CSV. Checkpoints go to OUT/checkpoints (load them with "
        "--weights OUT), metrics to OUT/metrics.jsonl. Settings: defaults < --config < options. "
        "Multi-process: torchrun --nproc_per_node N --no-python milnce train ...",
    )
    _add_run_inputs(p)
    _add_clip_options(p.add_argument_group("clips"))
    _add_optimisation_options(p.add_argument_group("optimisation"))
    _add_run_options(p.add_argument_group("run"))
    p.set_defaults(func=cmd_train)


def _add_run_inputs(p: argparse.ArgumentParser) -> None:
    """The data, the run folder, the settings file and the model to start from."""
    p.add_argument("--data", help="data folder, CSV, or webdataset tar shards ('shards/{00000..00127}.tar')")
    p.add_argument("--out", required=True, metavar="RUN", help="run folder (checkpoints, config.json, metrics.jsonl)")
    p.add_argument("--config", metavar="FILE", help="settings file (.yaml or .json; keys as the options, with _)")
    p.add_argument("--resume", action="store_true", help="continue RUN from its latest checkpoint (a new run if it has none)")
    p.add_argument("--val", help="held-out CSV (default: DATA/val.csv)")
    p.add_argument("--vocab", help="vocabulary .npy (default: DATA/vocab.npy, or the --weights checkpoint's)")
    init = p.add_argument("--weights", dest="init", metavar="WEIGHTS",
                          help="fine-tune from weights load_model accepts (file, bundle, run folder, registry name; "
                          "default: train from scratch)")
    deprecated_alias(p, init, "--init")
    p.add_argument("--word2vec", metavar="FILE", help="word vectors (.npy/.pth, V x 300) for the word embedding")
    p.add_argument("--train-word-embd", dest="freeze_word_embd", action="store_false", default=None,
                   help="also train the word embedding (frozen by default)")
    p.add_argument("--space-to-depth", action=B, default=None, help="S3D input stem (default: the --weights', else on)")


def _add_clip_options(g: argparse._ArgumentGroup) -> None:
    """How training clips are cut from the videos and their captions."""
    g.add_argument("--fps", type=float, help="sampling rate (default 10)")
    g.add_argument("--num-frames", type=int, help="frames per clip (default 32)")
    g.add_argument("--size", type=int, help="crop size in pixels (default 224)")
    g.add_argument("--decode-size", type=int, help="decode size before the random crop (default size*8/7)")
    g.add_argument("--min-time", type=float, help="widen the caption span to this many seconds (default 5)")
    g.add_argument("--num-candidates", type=int, metavar="K", help="captions per clip in the positive bag (default 4)")
    g.add_argument("--hflip", action=B, default=None, help="random horizontal flips (default on, unless DATA/dataset.json says no)")


def _add_optimisation_options(o: argparse._ArgumentGroup) -> None:
    """Steps, batches, the optimiser, its schedule and precision."""
    o.add_argument("--steps", type=int, help="train until this optimiser step (default 1000)")
    o.add_argument("--batch-size", type=int, help="clips per optimiser step over all processes (default 16)")
    o.add_argument("--micro-batch", type=int, metavar="M", help="gradient caching: forward passes of M clips, "
                   "negatives from the whole global batch (recommended for contrastive training; default: off)")
    o.add_argument("--grad-accum", type=int, help="micro-steps per optimiser step, negatives from each micro-step "
                   "only (default 1); prefer --micro-batch")
    o.add_argument("--freeze-bn", action=B, default=None, help="BatchNorm uses its running statistics (eval mode)")
    o.add_argument("--lr", type=float, help="peak learning rate of Adam (default 1e-3)")
    o.add_argument("--head-lr-mult", type=float, help="learning-rate factor of the projection heads (video fc, "
                   "text fc1/fc2); 0.1 keeps small-batch runs from blowing up the logits (default 1)")
    o.add_argument("--min-lr", type=float, help="final learning rate of the cosine (default 0)")
    o.add_argument("--warmup-steps", type=int, help="linear warm-up steps (default 100)")
    o.add_argument("--schedule-steps", type=int, help="cosine horizon (default: --steps of the first launch)")
    o.add_argument("--adam-eps", type=float, help="Adam epsilon (default 1e-8)")
    o.add_argument("--weight-decay", type=float, help="Adam weight decay (default 0)")
    o.add_argument("--grad-clip", type=float, help="clip the gradient norm to this value (default: off)")
    o.add_argument("--precision", choices=("fp32", "bf16", "fp16", "fp64"),
                   help="autocast precision (default fp32; fp16 on CUDA; fp64: exact checks on the CPU)")
    o.add_argument("--sync-bn", action=B, default=None, help="synchronise BatchNorm statistics across processes")
    o.add_argument("--seed", type=int, help="seed of the initialisation and the data order (default 0)")


def _add_run_options(r: argparse._ArgumentGroup) -> None:
    """Loaders, held-out evaluation, checkpoints, logging, the device and the bad-sample rule."""
    r.add_argument("--workers", type=int, help="data loader processes (default 2)")
    r.add_argument("--eval-every", type=int, help="held-out retrieval every N steps, 0: never (default 100)")
    r.add_argument("--eval-max", type=int, help="held-out pairs used (default 512)")
    r.add_argument("--save-every", type=int, help="checkpoint every N steps (default 100; always at the end)")
    r.add_argument("--keep-checkpoints", type=int, help="checkpoints kept (default 3)")
    r.add_argument("--log-every", type=int, help="metrics line every N steps (default 10)")
    r.add_argument("--device", help="torch device (default cuda:LOCAL_RANK when available, else cpu)")
    r.add_argument("--threads", type=int, help="CPU threads per process (default: torch's; 1 is best on a busy machine)")
    r.add_argument("--bad-fraction", type=float, help="stop when more than this fraction of the samples of "
                   "--bad-window steps is unreadable (default 0.1)")
    r.add_argument("--bad-window", type=int, help="steps over which --bad-fraction is judged (default 50)")
    r.add_argument("--quiet", dest="progress", action="store_false", default=None, help="no progress bar")


def _register_make_synthetic(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser(
        "make-synthetic",
        help="generate a small text-video dataset (moving coloured shapes) for training tests",
        description="Write OUT in the HowTo100M layout: N training videos and a held-out split in which "
        "every (colour, shape, direction) appears once, captions from a small grammar "
        "(\"a red square moves left\"), and vocab.npy.",
    )
    s.add_argument("out", metavar="OUT", help="new folder")
    num = s.add_argument("--num-videos", dest="videos", type=int, default=200, metavar="N",
                         help="training videos (default 200)")
    deprecated_alias(s, num, "--videos")
    val = s.add_argument("--num-val-videos", dest="val_videos", type=int, default=24, metavar="N",
                         help="held-out videos (default 24: all 48 combinations once)")
    deprecated_alias(s, val, "--val-videos")
    s.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    s.add_argument("--size", type=int, default=64, help="frame side in pixels (default 64)")
    s.add_argument("--fps", type=int, default=8, help="frame rate of the videos (default 8)")
    s.add_argument("--format", choices=("folder", "wds"), default="folder",
                   help="training split as a HowTo100M folder (default) or webdataset tar shards in the "
                   "video2dataset layout (OUT/shards/train-NNNNN.tar; the held-out split stays a folder)")
    s.add_argument("--videos-per-shard", type=int, default=50, metavar="N", help="with --format wds (default 50)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_make_synthetic)


_NOT_SETTINGS = {"command", "func", "out", "config", "resume"}


def cmd_train(args: argparse.Namespace) -> int:
    from ..train import distributed, resolve_config, train

    overrides = {k: v for k, v in vars(args).items() if k not in _NOT_SETTINGS and v is not None}
    cfg = resolve_config(args.out, overrides, args.config, resume=args.resume)
    with distributed(cfg.device) as ctx:
        last = train(cfg, args.out, resume=args.resume, ctx=ctx)
    if ctx.is_main:
        print(json.dumps({"run": args.out, "steps": cfg.steps, **{k: v for k, v in last.items()}}))
    return 0


def cmd_make_synthetic(args: argparse.Namespace) -> int:
    from ..train import make_synthetic, to_shards

    if args.format == "wds":
        try:
            import webdataset  # noqa: F401
        except ImportError:
            from ..errors import UsageError

            raise UsageError("--format wds needs webdataset (pip install 'milnce[train]')") from None
    root = make_synthetic(args.out, args.videos, args.val_videos, args.seed, size=args.size, fps=args.fps,
                          progress=not args.quiet)
    if args.format == "wds":
        to_shards(root, args.videos_per_shard)
    print(f"wrote {args.videos} training and {args.val_videos} held-out videos to {show_path(str(root))}", file=sys.stderr)
    return 0
