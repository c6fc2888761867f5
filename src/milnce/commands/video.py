"""Video commands: embed-video (an alias of ``milnce extract`` with its own defaults)."""

from __future__ import annotations

import argparse

from .common import FAILURE_EXIT, add_model_options, deprecated_alias
from .extract import add_clip_options, add_run_options


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "embed-video",
        help="embed every window of video files into the 512-d joint space (milnce extract)",
        description="Same code as 'milnce extract' (see its help), with embed-video's defaults: only "
        "video_embedding unless --mixed-5c. Writes OUT/<name>.npz per video with float32 'video_embedding' "
        "(N x 512), float64 'start'/'end' (seconds), 'duration', 'path', 'meta' and, with --mixed-5c, float32 "
        "'mixed_5c' (N x 1024). Finished videos are skipped (same settings and weights), changed ones redone; "
        "a video that cannot be read is reported in OUT/failures.csv and skipped; the exit status is 1 if any "
        "failed.",
        epilog=FAILURE_EXIT,
    )
    p.add_argument("videos", nargs="+", metavar="VIDEO", help="video files (mp4, webm, mkv, avi, gif, ...) or folders")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    mixed = p.add_argument("--mixed-5c", dest="features", action="store_true",
                           help="also save the 1024-d mixed_5c features")
    deprecated_alias(p, mixed, "--features")
    add_clip_options(p)
    add_run_options(p)
    add_model_options(p)
    p.set_defaults(func=cmd_embed_video)


def cmd_embed_video(args: argparse.Namespace) -> int:
    from ..extract import resolve_shard
    from .extract import rank_device, run_extraction

    shard = resolve_shard(args.shard)
    args.device = rank_device(args.device, shard.local_rank)
    features = ["video_embedding", "mixed_5c"] if args.features else ["video_embedding"]
    return run_extraction(args, args.videos, features, shard)
