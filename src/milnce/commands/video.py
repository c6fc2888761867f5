"""Video commands: embed-video."""

from __future__ import annotations

import argparse
import os
import sys

from ..windows import CROPS, WindowSettings
from .common import CommandError, add_model_options, model_from_args, window_settings


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "embed-video",
        help="embed every window of video files into the 512-d joint space",
        description="Decode each video, cut it into windows (num_frames frames at fps, every --stride "
        "frames) and embed them. Writes OUT/<name>.npz per video with float32 'embeddings' (N x 512), "
        "float64 'starts'/'ends' (seconds), 'duration', 'path' and, with --features, float32 'features' "
        "(N x 1024 mixed_5c). A video that cannot be read is reported and skipped; the exit status is 1 "
        "if any failed.",
    )
    p.add_argument("videos", nargs="+", metavar="VIDEO", help="video files (mp4, webm, mkv, avi, gif, ...)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    p.add_argument("--stride", type=int, default=None,
                   help=f"frames (at --fps) between window starts (default {WindowSettings().stride})")
    p.add_argument("--batch-size", type=int, default=4, help="windows per model call (default 4)")
    p.add_argument("--features", action="store_true", help="also save the 1024-d mixed_5c features")
    d = WindowSettings()
    p.add_argument("--fps", type=float, help=f"sampling rate (default: the model's, {d.fps:g})")
    p.add_argument("--num-frames", type=int, help=f"frames per window (default: the model's, {d.num_frames})")
    p.add_argument("--size", type=int, help=f"crop size in pixels (default: the model's, {d.size})")
    p.add_argument("--crop", choices=CROPS, default="center",
                   help="center: short side to SIZE then centre crop (default); square: centre square "
                   "crop then resize (reference evaluation); resize: full frame")
    p.add_argument("--start", type=float, help="start time in seconds (default: 0)")
    p.add_argument("--end", type=float, help="end time in seconds (default: the end of the video)")
    p.add_argument("--overwrite", action="store_true", help="re-embed videos whose .npz already exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_model_options(p)
    p.set_defaults(func=cmd_embed_video)


def _out_name(path: str, used: set[str]) -> str:
    stem = os.path.splitext(os.path.basename(os.path.normpath(path)))[0] or "video"
    name, i = stem, 1
    while name in used:
        name = f"{stem}-{i}"
        i += 1
    used.add(name)
    return name + ".npz"


def cmd_embed_video(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from ..video import encode_video_file

    window_settings(args)  # bad values: a one-line error before anything is created
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise CommandError(f"--out {args.out} exists and is not a folder")
    os.makedirs(args.out, exist_ok=True)
    model = model_from_args(args)
    used: set[str] = set()
    jobs = [(v, os.path.join(args.out, _out_name(v, used))) for v in args.videos]
    failed: list[tuple[str, str]] = []
    done = skipped = 0
    bar = tqdm(jobs, unit="video", disable=args.quiet or len(jobs) < 2, desc="videos")
    for video, target in bar:
        if os.path.exists(target) and not args.overwrite:
            skipped += 1
            continue
        try:
            res = encode_video_file(
                model, video, fps=args.fps, num_frames=args.num_frames, size=args.size, stride=args.stride,
                start=args.start, end=args.end, batch_size=args.batch_size, features=args.features,
                progress=not args.quiet, crop=args.crop,
            )
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # report the file and go on with the next one
            msg = str(exc) if video in str(exc) else f"{video}: {exc}"
            failed.append((video, msg))
            tqdm.write(f"milnce: failed: {msg}", file=sys.stderr)
            continue
        res.save(target)  # atomic; records the window settings
        done += 1
        if not args.quiet:
            tqdm.write(f"{video}: {len(res)} windows, {res.duration:.1f} s -> {target}")
    bar.close()
    summary = f"embedded {done} video(s) into {args.out}"
    if skipped:
        summary += f", {skipped} already there (use --overwrite to redo)"
    if failed:
        summary += f"; {len(failed)} failed:"
    print(summary, file=sys.stderr if failed else sys.stdout)
    for _video, msg in failed:
        print(f"  {msg}", file=sys.stderr)
    return 1 if failed else 0
