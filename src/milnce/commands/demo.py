"""``milnce demo``: index a few videos and answer queries, end to end, on any machine.

With the published weights (downloaded into the cache, or --weights/--vocab): the three demo GIFs
(waterfall, guitar, car drifting; online) or --videos DIR. When the published weights cannot be
had (no network, dead links, a checksum mismatch) the demo says so in one line and runs on a
small model trained here on generated videos (``milnce.train.fallback``), cached for the next run.
What it runs on and how it judges its answers is ``milnce.demo``; this module parses and prints.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shlex
import sys

from ..demo import Demo, HeldOutScore
from ..plural import plural
from .common import (
    CommandError,
    add_index_option,
    add_model_options,
    add_window_options,
    model_from_args,
    run_options,
    window_overrides,
    window_settings,
)
from .search_output import print_results


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="index a few videos and search them: the TF-Hub demo, or a small model trained here offline",
        description="Fetch the published weights and three GIFs (waterfall, guitar, car drifting) into "
        "$MILNCE_HOME/demo, index them and answer the three queries. When the published weights cannot be "
        "had, say why in one line and run the same demo on a small model trained here on generated videos "
        "(cached in $MILNCE_HOME/fallback: a few minutes once, then instant). Offline with your own copy: "
        "pass --weights/--vocab and --videos DIR.")
    p.add_argument("--videos", metavar="DIR", help="use the videos in this folder instead of downloading the GIFs")
    add_index_option(p, "index folder (default: $MILNCE_HOME/demo/index-<weights id>)")
    p.add_argument("--query", action="append", metavar="QUERY", help="query (repeatable; default: the demo's queries)")
    p.add_argument("-k", type=int, default=3, help="videos per query (default 3)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--no-fallback", action="store_true",
                   help="fail when the published weights cannot be had instead of training the small model")
    add_window_options(p, "for a new demo index")
    add_model_options(p)
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from ..api import env_path
    from ..demo import answer, build_demo_index, choose_demo, demo_index_dir, held_out_score
    from ..index import Index
    from ..printable import show_path

    window_settings(args)  # a bad window option fails before anything is downloaded or built
    if args.k < 1:
        raise CommandError(f"-k must be >= 1, got {args.k}")
    videos = _folder_videos(args.videos) if args.videos else None
    demo = choose_demo(lambda: model_from_args(args), own_weights=args.weights or env_path("MILNCE_WEIGHTS"),
                       videos=videos, download=not args.no_download, fallback=not args.no_fallback,
                       progress=not args.quiet, device=args.device, fast=not args.eager, precision=args.precision)
    print(f"model: {demo.label}")
    index_dir = args.index or demo_index_dir(demo)
    report = build_demo_index(demo, index_dir, window=window_overrides(args), run=run_options(args, device=demo.model.device),
                              allow_gaps=getattr(args, "allow_gaps", False), progress=not args.quiet)
    print(report.summary())
    for path, reason in report.failed[:10]:
        print(f"  failed: {show_path(path)}: {show_path(reason)}", file=sys.stderr)
    with Index.open(index_dir, demo.model) as index:
        k = max(1, min(args.k, index.num_videos))
        for q in args.query or demo.queries:
            ans = answer(index, demo, q)
            print_results(q, ans.ranked[:k], ans.problem, True)
            if ans.ranked:
                print(f"  -> best match ({demo.short}): {show_path(os.path.basename(ans.ranked[0].path))}"
                      + ans.verdict)
        if demo.expected and not args.query:
            print(_held_out_line(demo, held_out_score(index, demo)))
    _print_next(args, index_dir, demo)
    return 1 if report.failed or report.skipped_failures else 0  # as milnce index


def _folder_videos(folder: str) -> list[str]:
    """The videos of ``--videos DIR``; ``CommandError`` when it is no folder or holds none."""
    from ..index import find_videos

    if not os.path.isdir(folder):
        raise CommandError(f"--videos {folder}: no such folder")
    videos = find_videos([folder])
    if not videos:
        raise CommandError(f"--videos {folder}: no video files in that folder")
    return videos


def _held_out_line(demo: Demo, s: HeldOutScore) -> str:
    n, videos = max(s.captions, 1), max(s.videos, 1)
    return (f"\nAll {s.captions} held-out captions ({demo.short}): the video it describes comes first for {s.first} "
            f"({100 * s.first / n:.0f}%) and in the first five for {s.top5} ({100 * s.top5 / n:.0f}%); "
            f"by chance: {100 / videos:.0f}% and {100 * min(5, s.videos) / videos:.0f}% "
            f"of {plural(s.videos, 'video')}")


def _print_next(args: argparse.Namespace, index_dir: str, demo: Demo) -> None:
    model_opts = "".join(f" --{opt} {shlex.quote(str(getattr(args, opt)))}" for opt in ("weights", "vocab")
                         if getattr(args, opt, None))
    example = demo.queries[0] if demo.queries else "your words"
    print(f"\nSearch it yourself:  milnce search --index {shlex.quote(index_dir)} {shlex.quote(example)}{model_opts}")
    serve = f"Browse it in a web page:  milnce serve --index {shlex.quote(index_dir)}{model_opts}"
    if importlib.util.find_spec("fastapi") is None or importlib.util.find_spec("uvicorn") is None:
        serve += "  (needs pip install 'milnce[serve]')"
    print(serve + ", then open http://127.0.0.1:8000/")
