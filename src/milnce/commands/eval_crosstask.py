"""``milnce eval crosstask``: zero-shot step localisation on CrossTask (options parsed by ``commands.eval``)."""

from __future__ import annotations

import argparse
import json
import sys

from ..printable import show_ids, show_path, show_reasons
from .common import CommandError, model_from_args, run_options


def cmd_crosstask(args: argparse.Namespace) -> int:
    from ..eval import (
        EvalSettings,
        VideoResolver,
        crosstask_dict,
        evaluate_crosstask,
        format_crosstask,
        load_release,
        write_crosstask,
    )

    if args.annotations is None:
        raise CommandError("crosstask needs --annotations: the crosstask_release/ folder "
                           "(crosstask_release.zip from github.com/DmZhukov/CrossTask)")
    if args.num_windows not in (None, 1):
        raise CommandError("--num-windows does not apply to crosstask: each one-second position is one window")
    settings = EvalSettings.for_benchmark("crosstask", num_windows=1, num_frames=args.num_frames, fps=args.fps,
                                          size=args.size, max_words=args.max_words)
    cache = False if args.no_cache else (args.cache or True)
    # check the release and the video folder before loading (or downloading) the weights
    release = load_release(args.annotations, limit=args.limit)
    VideoResolver(args.videos, "crosstask")
    model = model_from_args(args)
    res = evaluate_crosstask(model, args.videos, release, settings=settings, cache=cache,
                             run=run_options(args, device=model.device), progress=not args.quiet)
    files = write_crosstask(res, args.out) if args.out else {}
    print(json.dumps(crosstask_dict(res), indent=2) if args.json else format_crosstask(res))
    if res.missing:
        print(f"milnce: {len(res.missing)} video(s) not found under {show_path(args.videos)}: "
              f"{show_ids(sorted(res.missing))}",
              file=sys.stderr)
    if res.unreadable:
        items = sorted(res.unreadable.items())
        print(f"milnce: {len(items)} video(s) unreadable: " + show_reasons(items), file=sys.stderr)
    if res.skipped:
        items = sorted(res.skipped.items())
        print(f"milnce: {len(items)} video(s) skipped: " + show_reasons(items), file=sys.stderr)
    if files:
        print(f"milnce: wrote {', '.join(show_path(str(f)) for f in files.values())}", file=sys.stderr)
    if not res.videos:
        raise CommandError(f"no CrossTask video could be evaluated under {args.videos} ({len(res.missing)} missing, "
                           f"{len(res.unreadable)} unreadable, {len(res.skipped)} skipped)")
    return 1 if (res.missing or res.unreadable) else 0
