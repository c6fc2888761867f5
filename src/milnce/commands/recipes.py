"""``milnce recipes`` (the feature recipes), ``milnce extract --recipe NAME`` (its run) and
``milnce pack univl|videoclip DIR OUT`` (the consumers' packed files)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .common import CommandError, model_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("recipes", help="list the feature recipes (milnce extract --recipe NAME)",
                       description="The exact S3D features downstream models expect, each with its source.")
    p.set_defaults(func=cmd_recipes)
    p = sub.add_parser("pack", help="pack recipe features into a consumer's training file (opt-in pickle export)",
                       description="univl: one pickled dict {video_id: float16 array} as UniVL's "
                       "convert_video_feature_to_pickle.py writes it (OUT: the .pickle file). videoclip: MMPT "
                       "shards as its shard_feature.py writes them (OUT: a folder with {split}_{i}_data.npy, "
                       "{split}_{i}_starts.npy and the pickled {split}_meta.pkl). milnce itself never reads pickles.")
    p.add_argument("consumer", choices=("univl", "videoclip"))
    p.add_argument("dir", metavar="DIR", help="the folder written by milnce extract --recipe")
    p.add_argument("out", metavar="OUT", help="univl: the pickle file; videoclip: the shard folder")
    p.add_argument("--ids", metavar="LIST", help="videoclip: a text file of video ids, one a line, in shard order "
                   "(default: every DIR/*.npy in name order)")
    p.add_argument("--split", default="train", help="videoclip: the split name in the file names (default train)")
    p.add_argument("--shard-size", type=int, default=4096, help="videoclip: videos per shard (default 4096)")
    p.set_defaults(func=cmd_pack)


def cmd_recipes(args: argparse.Namespace) -> int:
    from ..recipes import recipes_table

    print(recipes_table())
    return 0


def cmd_pack(args: argparse.Namespace) -> int:
    from ..errors import MilnceError
    from ..extract.pack import pack_univl, pack_videoclip

    try:
        if args.consumer == "univl":
            n = pack_univl(args.dir, args.out)
        else:
            ids = None
            if args.ids:
                try:
                    with open(args.ids, encoding="utf-8") as f:
                        ids = [line.strip() for line in f if line.strip()]
                except (OSError, UnicodeDecodeError) as exc:
                    raise CommandError(f"--ids {args.ids}: cannot read ({exc})") from exc
            n = pack_videoclip(args.dir, args.out, ids=ids, split=args.split, shard_size=args.shard_size)
    except MilnceError as exc:
        raise CommandError(str(exc)) from exc
    print(f"packed {n} videos into {args.out}")
    return 0


def run_recipe(args: argparse.Namespace) -> int:
    """``milnce extract --recipe NAME``: conflicts refused, then the recipe's extraction or check."""
    from ..errors import MilnceError
    from ..extract import check, collect_inputs, resolve_shard
    from ..extract.recipe_store import RecipeLayout, extract_recipe
    from ..recipes import check_conflicts, get_recipe
    from .extract import _default_workers, _device, _print_report

    try:
        recipe = get_recipe(args.recipe)
        given: dict[str, Any] = {k: getattr(args, k, None) for k in
                                 ("fps", "num_frames", "size", "stride", "crop", "pad", "start", "end")}
        given["features"] = args.features.split(",") if args.features else None
        check_conflicts(recipe, given)
        if args.check:
            rep = check(args.check, args.paths, layout=RecipeLayout(recipe))
            _print_report(rep, args.json)
            return 0 if rep.complete else 1
        if not args.out:
            raise CommandError("--out DIR is required (or --check DIR to report completeness)")
        for name in ("batch_size", "workers", "decode_threads"):
            v = getattr(args, name, None)
            if v is not None and v < (0 if name == "workers" else 1):
                raise CommandError(f"--{name.replace('_', '-')} must be >= {0 if name == 'workers' else 1}, got {v}")
        shard = resolve_shard(args.shard)
        args.device = _device(args.device, shard.local_rank)
        inputs = collect_inputs(args.paths)
        from ..extract.recipe_store import check_unique_ids

        check_unique_ids(inputs)  # before the model loads
        model = model_from_args(args)
        workers = args.workers if args.workers is not None else _default_workers()
        report = extract_recipe(inputs, args.out, model, recipe, batch_size=args.batch_size, workers=workers,
                                decode_threads=args.decode_threads, shard=shard, overwrite=args.overwrite,
                                progress=not args.quiet)
    except MilnceError as exc:
        raise CommandError(str(exc)) from exc
    _print_report(report, args.json, sys.stderr if report.failed else sys.stdout)
    if report.failed and not args.json:
        for _path, msg in report.failures[:50]:
            print(f"  failed: {msg}", file=sys.stderr)
        print(f"  (all failures: {report.failures_file})", file=sys.stderr)
    return 1 if report.failed else 0
