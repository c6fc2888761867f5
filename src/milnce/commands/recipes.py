"""``milnce recipes`` (the feature recipes), ``milnce extract --recipe NAME`` (its run) and
``milnce pack univl|videoclip DIR OUT`` (the consumers' packed files)."""

from __future__ import annotations

import argparse
from typing import Any

from ..plural import plural
from ..printable import show_path
from .common import CommandError


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
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT (univl: the file; videoclip: "
                   "the split's shards and meta file)")
    p.set_defaults(func=cmd_pack)


def cmd_recipes(args: argparse.Namespace) -> int:
    from ..recipes import recipes_table

    print(recipes_table())
    return 0


def cmd_pack(args: argparse.Namespace) -> int:
    from ..extract import pack_univl, pack_videoclip, read_id_list

    if args.consumer == "univl":
        if args.ids:
            raise CommandError("--ids is for pack videoclip (UniVL's pickle holds every DIR/*.npy)")
        n = pack_univl(args.dir, args.out, overwrite=args.overwrite)
    else:
        ids = read_id_list(args.ids) if args.ids else None
        n = pack_videoclip(args.dir, args.out, ids=ids, split=args.split, shard_size=args.shard_size,
                           overwrite=args.overwrite)
    print(f"packed {plural(n, 'video')} into {show_path(args.out)}")
    return 0


def recipe_from_args(args: argparse.Namespace) -> Any:
    """``milnce extract --recipe NAME``: the ``Recipe``, options that conflict with it refused
    (the run itself is ``extract``'s: ``commands.extract.run_extraction(..., recipe=)``)."""
    from ..recipes import check_conflicts, get_recipe

    recipe = get_recipe(args.recipe)
    given: dict[str, Any] = {k: getattr(args, k, None) for k in
                             ("fps", "num_frames", "size", "stride", "crop", "pad", "start", "end")}
    given["features"] = args.features.split(",") if args.features else None
    check_conflicts(recipe, given)
    return recipe
