"""``milnce eval youcook2|msrvtt|hmdb51|ucf101|crosstask``: reproduce the published benchmark numbers."""

from __future__ import annotations

import argparse
import json
import sys

from ..plural import plural
from ..printable import show_ids, show_path, show_reasons
from .common import FAILURE_EXIT, CommandError, add_batch_option, add_model_options, model_from_args, run_options


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate on YouCook2 / MSR-VTT (zero-shot retrieval), HMDB-51 / UCF-101 (linear probe) or "
        "CrossTask (zero-shot step localisation)",
        description="Run a public evaluation protocol on videos you have on disk and print the numbers "
        "next to the published ones. Per clip: NUM_WINDOWS windows of NUM_FRAMES frames at FPS, starts "
        "linspace(start, max(start, end - NUM_FRAMES/FPS - 0.4), NUM_WINDOWS), centre square crop resized "
        "to SIZE, zeros past the end of the video; the clip embedding is the mean of its windows "
        "(MSR-VTT, HMDB-51 and UCF-101 clips are whole videos). CrossTask: one window per second of "
        "each video, centred on it, scored against the task's steps, steps placed by the CrossTask "
        "dynamic programming; see the README. Missing or unreadable videos are counted and "
        "listed and the metrics are over the clips present; the exit status is then 1. Window "
        "embeddings are cached per video, so a rerun is instant.",
        epilog=FAILURE_EXIT,
    )
    p.add_argument("benchmark", choices=("youcook2", "msrvtt", "hmdb51", "ucf101", "crosstask"), help="which benchmark")
    p.add_argument("--videos", required=True, metavar="DIR",
                   help="dataset folder: YouCook2 DIR/validation/<task>/<id>.{mp4,mkv,webm}; MSR-VTT "
                   "DIR/<id>.mp4; HMDB-51 and UCF-101 DIR/<class>/<id>.avi; a flat DIR/<id>.<ext> works for all "
                   "(CrossTask: <video_id>.<any video extension> anywhere under DIR)")
    p.add_argument("--annotations", metavar="PATH",
                   help="annotation file (default: the public one, shipped); UCF-101: the ucfTrainTestlist/ folder; "
                   "CrossTask: the crosstask_release/ folder (both required)")
    p.add_argument("--out", metavar="DIR",
                   help="write metrics.json, embeddings.npz and results.txt here (CrossTask: also scores.npz)")
    p.add_argument("--json", action="store_true", help="print metrics.json's content instead of the table")
    p.add_argument("--limit", type=int, metavar="N",
                   help="only the first N rows (HMDB-51, UCF-101: N rows round-robin over classes; CrossTask: "
                   "the first N videos), for quick trials")
    g = p.add_argument_group("protocol (defaults: the public evaluation's)")
    g.add_argument("--num-windows", type=int, help="windows per clip (default 4; HMDB-51, UCF-101: 10; "
                   "CrossTask: one per position, fixed)")
    g.add_argument("--num-frames", type=int, default=32, help="frames per window (default 32)")
    g.add_argument("--fps", type=float, default=10.0, help="frames per second sampled (default 10)")
    g.add_argument("--size", type=int, default=224, help="square crop side in pixels (default 224)")
    g.add_argument("--max-words", type=int, default=30,
                   help="words per caption (default 30 as the public evaluation; the model's own text module uses 16)")
    g.add_argument("--ties", choices=("pessimistic", "average", "optimistic"), default="pessimistic",
                   help="rank of a correct clip tied with others (default pessimistic: behind all of them)")
    r = p.add_argument_group("running")
    r.add_argument("--workers", type=int, help="decoding processes of the extraction pipeline (default: cores - 1; 0 = a thread)")
    add_batch_option(r)
    r.add_argument("--cache", metavar="DIR", help="embedding cache folder (default $MILNCE_HOME/eval-cache)")
    r.add_argument("--no-cache", action="store_true", help="neither read nor write the embedding cache")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    add_model_options(p)
    p.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    from ..eval import (
        EvalSettings,
        VideoResolver,
        evaluate,
        format_table,
        load_benchmark,
        result_dict,
        write_outputs,
    )

    for name, low in (("workers", 0), ("batch_size", 1), ("limit", 1)):
        v = getattr(args, name)
        if v is not None and v < low:
            raise CommandError(f"--{name.replace('_', '-')} must be >= {low}, got {v}")
    if args.benchmark == "crosstask":
        from .eval_crosstask import cmd_crosstask

        return cmd_crosstask(args)
    settings = EvalSettings.for_benchmark(args.benchmark, num_windows=args.num_windows, num_frames=args.num_frames,
                                          fps=args.fps, size=args.size, max_words=args.max_words)
    cache = False if args.no_cache else (args.cache or True)
    # check the annotations and the video folder before loading (or downloading) the weights
    bench = load_benchmark(args.benchmark, args.annotations, args.limit)
    VideoResolver(args.videos, args.benchmark)
    model = model_from_args(args)
    result = evaluate(model, bench, args.videos, settings=settings, cache=cache,
                      run=run_options(args, device=model.device), ties=args.ties, progress=not args.quiet)
    files = write_outputs(result, args.out) if args.out else {}
    if args.json:
        print(json.dumps(result_dict(result), indent=2))
    else:
        print(format_table(result))
    c = result.counts
    if result.clips.missing:
        print(f"milnce: {len(result.clips.missing)} video(s) not found under {show_path(args.videos)}: "
              f"{show_ids(sorted(result.clips.missing))}", file=sys.stderr)
    if result.clips.unreadable:
        items = sorted(result.clips.unreadable.items())
        print(f"milnce: {len(items)} video(s) unreadable: " + show_reasons(items), file=sys.stderr)
    if files:
        print(f"milnce: wrote {', '.join(show_path(str(f)) for f in files.values())}", file=sys.stderr)
    if c["evaluated"] == 0:
        raise CommandError(f"no {args.benchmark} video could be evaluated under {args.videos} "
                           f"({plural(c['missing'], 'row')} missing, {c['unreadable']} unreadable)")
    return 1 if c["evaluated"] < c["rows_selected"] else 0
