"""``milnce extract``: features of many videos, sharded over ranks, resumable (``milnce.extract``)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..windows import CROPS, PADS
from .common import (
    FAILURE_EXIT,
    CommandError,
    add_batch_option,
    add_model_options,
    add_window_options,
    deprecated_alias,
    model_from_args,
    run_options,
)

HELP = "extract per-window features of many videos (all cores and GPUs busy, sharded, resumable)"
DESCRIPTION = (
    "Embed every window of every video (PATH: video files, folders searched recursively, or list files: "
    ".txt one path per line, .csv with a video_path column) and write DIR/<path relative to its PATH, "
    "suffix .npz> with float32 video_embedding (n x 512), mixed_5c (n x 1024), float64 start/end "
    "(seconds) and the settings + weights fingerprint. Files are written atomically; a rerun skips "
    "finished videos and redoes changed ones. Under torchrun (RANK/WORLD_SIZE, LOCAL_RANK picks the "
    "GPU), in a SLURM array (SLURM_ARRAY_TASK_ID/COUNT) or with --shard I/N each process takes a "
    "disjoint share balanced by file size. Unreadable videos go to DIR/failures.csv; exit status 1 if "
    "any failed. 'milnce extract --check DIR PATH...' reports how complete DIR is."
)


def add_clip_options(p: argparse.ArgumentParser) -> None:
    """The window options (``commands.common``) plus crop, padding and the time range."""
    add_window_options(p, "extraction", batch_size=False)
    g = p.add_argument_group("clips")
    g.add_argument("--crop", choices=CROPS, default=None,
                   help="center: short side to SIZE then centre crop (default); square: centre square crop then "
                   "resize (reference evaluation); resize: full frame")
    g.add_argument("--pad", choices=PADS, default=None,
                   help="last partial window: repeat the last frame (default), loop the window, or black frames")
    g.add_argument("--start", type=float, help="start time in seconds in every video (default: 0)")
    g.add_argument("--end", type=float, help="end time in seconds in every video (default: the end)")


def add_run_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("run")
    add_batch_option(g)
    g.add_argument("--workers", type=int, help="decoding processes (default: the cores available to this "
                   "rank minus one; 0 = a thread of the main process)")
    g.add_argument("--decode-threads", type=int, help="decoder threads per video (default 1 with workers)")
    g.add_argument("--shard", metavar="I/N", help="take share I (0-based) of N; nests with torchrun/SLURM")
    g.add_argument("--overwrite", action="store_true", help="redo every video, even finished ones")
    verify = g.add_argument("--verify-files", dest="verify", action="store_true", help="read every finished file's "
                            "members (CRC) and redo the damaged ones (with --check: report them); every run checks the "
                            "files' structure anyway")
    deprecated_alias(p, verify, "--verify")
    g.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    g.add_argument("--quiet", action="store_true", help="no progress bar")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("extract", help=HELP, description=DESCRIPTION, epilog=FAILURE_EXIT)
    p.add_argument("paths", nargs="*", metavar="PATH", help="video files, folders or list files (.txt/.csv)")
    p.add_argument("--out", metavar="DIR", help="output folder (created if missing)")
    p.add_argument("--check", metavar="DIR", help="only report how complete DIR is for PATH... (no model needed)")
    p.add_argument("--features", default=None,
                   help="comma-separated: video_embedding, mixed_5c (default both)")
    p.add_argument("--recipe", metavar="NAME",
                   help="the exact features a downstream model expects, in its file layout: videoclip, univl "
                   "('list' prints them; see 'milnce recipes'); conflicting options are refused")
    add_clip_options(p)
    add_run_options(p)
    add_model_options(p)
    p.set_defaults(func=cmd_extract)


def rank_device(device: str, local_rank: int | None) -> str:
    """``--device`` checked on this machine (one line for CUDA where there is none); a plain
    ``cuda`` under ``torchrun`` is this rank's GPU."""
    from ..runoptions import check_device

    return str(check_device(device, local_rank))


def _print_report(report: Any, as_json: bool, stream: Any = None) -> None:
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.summary(), file=stream or sys.stdout)


def cmd_extract(args: argparse.Namespace) -> int:
    from ..extract import check, resolve_shard

    if args.recipe == "list":
        from ..recipes import recipes_table

        print(recipes_table())
        return 0
    if not args.paths:
        raise CommandError("give at least one PATH (video files, folders or list files)")
    recipe = layout = None
    if args.recipe is not None:
        from ..extract import RecipeLayout
        from .recipes import recipe_from_args

        recipe = recipe_from_args(args)  # conflicting options refused
        layout = RecipeLayout(recipe)
    if args.check:
        rep = check(args.check, args.paths, verify=getattr(args, "verify", False), layout=layout)
        _print_report(rep, args.json)
        return 0 if rep.complete else 1
    if not args.out:
        raise CommandError("--out DIR is required (or --check DIR to report completeness)")
    shard = resolve_shard(args.shard)
    args.device = rank_device(args.device, shard.local_rank)
    if recipe is not None:
        return run_extraction(args, args.paths, recipe.features(), shard, recipe=recipe)
    return run_extraction(args, args.paths, (args.features or "video_embedding,mixed_5c").split(","), shard)


def run_extraction(args: argparse.Namespace, paths: list[str], features: list[str], shard: Any,
                   recipe: Any = None) -> int:
    """The code path of ``extract`` and ``embed-video``: parsed options -> ``milnce.extract.extract``
    (``recipe``: a ``milnce.recipes.Recipe``, its windows, padding and file layout instead)."""
    from ..extract import check_features, collect_inputs, extract, finish_together, show
    from ..windows import WindowSettings

    if args.decode_threads is not None and args.decode_threads < 1:
        raise CommandError(f"--decode-threads must be >= 1, got {args.decode_threads}")
    run = run_options(args)  # batch size, workers (ranks on one machine share its cores), threads: once, before the model loads
    if str(args.device).startswith("cuda:"):
        import torch

        try:  # this rank's GPU is the current device (no stray context on GPU 0)
            torch.cuda.set_device(torch.device(args.device))
        except (RuntimeError, AssertionError, ValueError) as exc:
            raise CommandError(f"--device {args.device}: {exc}") from exc
    check_features(features)  # bad options fail before the model loads
    WindowSettings.for_model(None, fps=args.fps, num_frames=args.num_frames, size=args.size,
                             stride=args.stride, crop=args.crop, allow_gaps=True)  # gaps: once the model is known
    inputs = collect_inputs(paths)
    layout = None
    if recipe is not None:
        from ..extract import RecipeLayout, check_unique_ids

        check_unique_ids(inputs)  # before the model loads
        layout = RecipeLayout(recipe)
    model = model_from_args(args)
    if recipe is not None:
        settings, pad = recipe.window, "zeros"
    else:
        settings = WindowSettings.for_model(model, fps=args.fps, num_frames=args.num_frames, size=args.size,
                                            stride=args.stride, crop=args.crop,
                                            allow_gaps=getattr(args, "allow_gaps", False))
        pad = args.pad or "repeat"
    report = extract(inputs, args.out, model, settings, features=features, pad=pad, start=args.start,
                     end=args.end, run=run, shard=shard, overwrite=args.overwrite,
                     progress=not args.quiet, verify=getattr(args, "verify", False), layout=layout)
    everyone = finish_together(args.out, shard, report.failures)  # torchrun: all ranks, then exit
    _print_report(report, args.json, sys.stderr if report.failed else sys.stdout)
    if report.failed and not args.json:
        for _path, msg in report.failures[:50]:
            print(f"  failed: {show(_path)}: {show(msg)}", file=sys.stderr)
        print(f"  (all failures: {show(str(report.failures_file))})", file=sys.stderr)
    return 1 if everyone else 0
