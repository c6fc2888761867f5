"""The ``migrate`` command: copy an index folder into a Milvus collection (``milnce.index.migrate``)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..plural import plural
from ..printable import show_path
from .common import CommandError
from .vocabulary import add_collection_option


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "migrate", help="copy an index folder into a Milvus collection (Milvus Lite .db file or a server)",
        description="Copy the index folder SOURCE (from 'milnce index') into a Milvus collection: --to a path "
        "ending .db (Milvus Lite, one process at a time) or http(s)://host:port (a Milvus server; the token comes "
        "from $MILNCE_MILVUS_TOKEN). Resumable: run it again after an interruption; videos already copied are "
        "skipped, none is duplicated or left half-copied. At the end the window count and a sample of vectors "
        "are compared with the folder.",
        epilog="Example: milnce migrate my_index --to videos.db, then milnce search --index videos.db 'cut a tomato'",
    )
    p.add_argument("source", metavar="SOURCE", help="the folder built by milnce index")
    p.add_argument("--to", required=True, metavar="URI", help="a Milvus Lite .db file or http(s)://host:port")
    add_collection_option(p)
    p.add_argument("--batch-windows", type=int, default=20000,
                   help="windows per write (default 20000)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=cmd_migrate)


def cmd_migrate(args: argparse.Namespace) -> int:
    from ..index import DEFAULT_COLLECTION, MigrateReport, check_collection, is_milvus_uri, migrate

    if not is_milvus_uri(args.to):
        raise CommandError(f"--to {args.to}: give a Milvus Lite file ending .db or http(s)://host:port")
    if args.batch_windows < 1:
        raise CommandError(f"--batch-windows must be >= 1, got {args.batch_windows}")
    collection = check_collection(DEFAULT_COLLECTION if args.collection is None else args.collection)

    def progress(rep: MigrateReport, total: int) -> None:
        print(f"migrated {rep.copied + rep.skipped}/{total} videos ({plural(rep.windows_copied, 'window')} written)",
              flush=True)

    show = None if args.quiet or args.json else progress
    rep = migrate(args.source, args.to, collection=collection, batch_windows=args.batch_windows, progress=show)
    if args.json:
        d: dict[str, Any] = rep.to_dict()
        print(json.dumps(d))
        return 0
    print(f"{show_path(rep.source)} -> {show_path(rep.target)} (collection {rep.collection}): "
          f"{rep.copied} copied, {rep.skipped} already there, {rep.removed} removed; "
          f"{plural(rep.num_videos, 'video')}, {plural(rep.num_windows, 'window')}; counts and "
          f"{plural(rep.verified_videos, 'sampled video')} verified in {rep.elapsed:.1f} s")
    if rep.orphans_deleted:
        print(f"deleted {plural(rep.orphans_deleted, 'window')} left by an interrupted run", file=sys.stderr)
    return 0
