"""Search commands: index, search, remove, localize (``milnce demo``: ``commands/demo.py``), and
how ``milnce search`` reads its queries and writes its results: the queries file streamed in
batches with bounded memory (``iter_queries_file``), and the result formats (table, JSON, CSV)
written as they come (``SearchOutput``; ``print_results``, the table ``milnce demo`` prints too)."""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
import warnings
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from ..index import IndexReport

from ..errors import MissingFileError
from ..listfiles import bounded_lines, open_list
from ..plural import plural
from ..printable import show_path
from ..timespec import parse_like
from .common import (
    FAILURE_EXIT,
    CommandError,
    add_batch_option,
    add_index_option,
    add_model_options,
    add_window_options,
    deprecated_alias,
    model_for_index,
    model_from_args,
    window_overrides,
    window_settings,
)


def register(sub: argparse._SubParsersAction) -> None:
    _register_index(sub)
    _register_search(sub)
    _register_remove(sub)
    _register_localize(sub)


def _register_index(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "index", help="embed videos into a searchable index folder",
        description="Walk files and folders, embed every video as sliding windows and store them in "
        "the index folder (SQLite + memory-mapped vectors). Incremental: unchanged videos are skipped, "
        "changed ones re-embedded, moved ones recognised by content. Safe to interrupt and re-run.",
        epilog=FAILURE_EXIT)
    p.add_argument("paths", nargs="*", metavar="PATH", help="video files or folders")
    add_index_option(p, "index folder (created if needed)", required=True)
    p.add_argument("--from-features", metavar="DIR",
                   help="index the feature files of 'milnce extract --out DIR' instead of videos, without loading "
                   "the model (settings and weights fingerprint come from the files)")
    p.add_argument("--root", action="append", metavar="DIR",
                   help="a collection root: a folder where the indexed videos live (repeatable). Required with "
                   "--from-features (the files need not exist yet); the PATHs given are roots too. 'milnce serve' "
                   "serves only files inside the roots. Alone (no PATH): record roots for an existing index")
    p.add_argument("--prune", action="store_true", help="drop indexed videos whose file no longer exists")
    p.add_argument("--ann", nargs="?", const="ivf", choices=("ivf", "pq"), default=None,
                   help="(re)build the approximate index (faiss) if missing, stale, damaged or of the other kind, and "
                   "report its recall@10; skipped below --ann-min-windows windows. 'ivf' (default): one file, "
                   "8-bit codes; 'pq': IVF-PQ with on-disk lists and an HNSW quantizer, for stores past RAM")
    p.add_argument("--ann-min-windows", type=int, default=None, metavar="N",
                   help="build the ANN index only from N windows on (default 50000: below, exact search is fast)")
    p.add_argument("--no-recursive", action="store_true", help="do not descend into sub-folders")
    p.add_argument("--retry-errors", action="store_true", help="try again the videos that failed before")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    add_window_options(p, "recorded in a new index; an existing index keeps its own", batch_size=False)
    g = p.add_argument_group("run")
    add_batch_option(g, "windows per model call, windows of several videos together")
    g.add_argument("--workers", type=int, default=None, metavar="N",
                   help="decoding processes (default: the cores available minus one; 0 = a thread of this process)")
    add_model_options(p)
    p.set_defaults(func=cmd_index)


def _register_search(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "search", help="find the moments of indexed videos that match sentences",
        description="Rank moments (video, start, end, score) of an index for each query. A moment is a "
        "run of adjacent windows around a peak that score within 10% of (peak - median) of the peak; "
        "moments do not depend on -k: -k N gives the first N of one ranking.")
    p.add_argument("queries", nargs="*", metavar="QUERY", help="sentences (quote each one)")
    add_index_option(p, "index folder (from 'milnce index')", required=True, legacy="queries")
    p.add_argument("--queries-file", metavar="FILE", help="more queries, one per line ('-': standard input)")
    p.add_argument("--like", metavar="VIDEO[@START]", action="append",
                   help="query by example: moments like the window of VIDEO (a path, or an indexed video's id) "
                   "starting nearest START seconds (default 0; also M:SS); the example's own video is left out")
    p.add_argument("-k", type=int, default=10, help="results per query (default 10)")
    videos = p.add_argument("--list-videos", dest="videos", action="store_true",
                            help="rank whole videos (by their best moment)")
    deprecated_alias(p, videos, "--videos")
    p.add_argument("--no-merge", action="store_true", help="list single windows instead of moments")
    p.add_argument("--exact", action="store_true", help="exact search even if an ANN index exists")
    p.add_argument("--offset", type=int, default=0, metavar="N",
                   help="skip the first N results (pages: --offset 10 -k 10 is results 11-20 of one ranking)")
    g = p.add_argument_group("negative terms", "a window's score becomes pos - W x max(score of each --not term), "
                             "before moments are formed (moments are re-ranked, not only filtered)")
    g.add_argument("--not", dest="negatives", action="append", default=[], metavar="TEXT",
                   help="a sentence the moments should not match (repeatable)")
    g.add_argument("--not-weight", type=float, default=None, metavar="W",
                   help="W >= 0 (default 0.5: a window drops below another only if its negative score is higher "
                   "by twice the gap in their positive scores; see README to tune it)")
    f = p.add_argument_group("filters", "only videos that pass every filter are searched (before the top -k)")
    f.add_argument("--under", metavar="DIR", help="videos inside this folder (any depth)")
    f.add_argument("--path-glob", metavar="GLOB", help="'*.mp4' (file name) or 'kitchen/**/2024-*' (path relative "
                   "to the collection folder); * ? [..] within a component, ** across")
    f.add_argument("--after", metavar="WHEN", help="modified at or after WHEN (YYYY-MM-DD[THH:MM], local time, or "
                   "epoch seconds)")
    f.add_argument("--before", metavar="WHEN", help="modified before WHEN")
    f.add_argument("--min-duration", type=float, default=None, metavar="S", help="videos at least S seconds long")
    f.add_argument("--max-duration", type=float, default=None, metavar="S", help="videos at most S seconds long")
    p.add_argument("--format", choices=("table", "json", "csv"), default=None, help="output format (default table)")
    p.add_argument("--json", action="store_true", help="same as --format json")
    p.add_argument("--csv", action="store_true", help="same as --format csv (one row per result)")
    add_model_options(p)
    p.set_defaults(func=cmd_search)


def _register_remove(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "remove", help="remove videos from an index",
        description="Remove indexed videos (files, or folders: every indexed video under them) from an "
        "index; the files need not exist. Their space is reclaimed when dead rows exceed a quarter of the store.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="indexed video files or folders")
    add_index_option(p, "index folder", required=True, legacy="paths", keep=1)
    p.add_argument("--json", action="store_true", help="print the removed paths as JSON")
    p.set_defaults(func=cmd_remove)


def _register_localize(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "localize", help="score a sentence along one video: curve, best moments, plot",
        description="Score every window of one video against a sentence, list the best moments, and "
        "optionally plot the curve (PNG) with the moments marked.")
    p.add_argument("video", metavar="VIDEO", help="video file")
    p.add_argument("query", metavar="QUERY", help="sentence")
    p.add_argument("-k", type=int, default=5, help="moments to list (default 5)")
    p.add_argument("--plot", metavar="PNG", help="write a plot of the score curve")
    add_index_option(p, "reuse this index's windows (and settings) if it holds the video")
    p.add_argument("--no-merge", action="store_true", help="do not merge adjacent windows")
    p.add_argument("--json", action="store_true", help="print every window's score and the moments as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_window_options(p, "default: the index's with --index, else the model's: 32 frames at 10 fps, stride half the window")
    add_model_options(p)
    p.set_defaults(func=cmd_localize)


# --------------------------------------------------------------------------------------------


def _model(args: argparse.Namespace, index: str | None = None):  # type: ignore[no-untyped-def]
    """The model of the options; with ``index``, the weights that index records unless --weights is given."""
    import torch

    torch.set_num_threads(max(1, min(torch.get_num_threads(), os.cpu_count() or 1)))
    return model_for_index(args, index, model_from_args) if index else model_from_args(args)


def _check_batch(args: argparse.Namespace) -> None:
    """Validate the window options (one-line ``UsageError``) before anything is created or loaded."""
    window_settings(args)


def cmd_index(args: argparse.Namespace) -> int:
    from ..index import build_index, find_videos

    _check_batch(args)
    if args.ann_min_windows is not None and args.ann_min_windows < 0:
        raise CommandError(f"--ann-min-windows must be >= 0, got {args.ann_min_windows}")
    if args.ann:
        try:
            import faiss  # noqa: F401
        except ImportError:
            raise CommandError("--ann needs faiss: pip install faiss-cpu (exact search works without it)") from None
    if args.from_features:
        return _index_from_features(args)
    if not args.paths and args.root:
        return _record_roots(args)
    if not args.paths:
        raise CommandError("give the videos to index (files or folders), or --from-features DIR")
    files = find_videos(args.paths, recursive=not args.no_recursive, exclude=[args.index])
    if not files and not args.prune:
        raise CommandError(f"no video files found in {', '.join(args.paths)} "
                           "(looked for .mp4 .mkv .webm .avi .mov .gif ...)")
    if os.path.isdir(args.index):  # say so before loading the model if another run holds the folder
        from ..index import check_unlocked

        check_unlocked(args.index)
    model = _model(args)
    extra = {} if args.ann_min_windows is None else {"ann_min_windows": args.ann_min_windows}
    report = build_index(args.paths, args.index, model, prune=args.prune, ann=args.ann,
                         progress=not args.quiet and not args.json, recursive=not args.no_recursive,
                         retry_errors=args.retry_errors, batch_size=args.batch_size, workers=args.workers,
                         roots=args.root or [], allow_gaps=args.allow_gaps, **extra,
                         **window_overrides(args))
    return _print_report(args, report)


def _index_from_features(args: argparse.Namespace) -> int:
    from ..index import index_features

    if args.paths:
        raise CommandError("give either videos (PATH...) or --from-features DIR, not both")
    if os.path.isdir(args.index):
        from ..index import check_unlocked

        check_unlocked(args.index)
    extra = {} if args.ann_min_windows is None else {"ann_min_windows": args.ann_min_windows}
    report = index_features(args.from_features, args.index, prune=args.prune, ann=args.ann,
                            settings=window_overrides(args), progress=not args.quiet and not args.json,
                            roots=args.root or [], **extra)
    return _print_report(args, report)


def _record_roots(args: argparse.Namespace) -> int:
    """``milnce index --index DIR --root ROOT...``: record collection roots of an existing index."""
    from ..index import Index
    from ..index.layout import DB_NAME

    if not os.path.isfile(os.path.join(args.index, DB_NAME)):
        raise CommandError(f"--root without PATHs records roots of an existing index; there is none at {args.index}")
    with Index.open(args.index, readonly=False) as index:
        index.add_roots(args.root)
        roots = index.roots
    print(f"{show_path(args.index)}: collection roots: {', '.join(show_path(r) for r in roots)}")
    return 0


def _print_report(args: argparse.Namespace, report: IndexReport) -> int:

    if args.json:
        print(json.dumps(finite(report.to_dict()), default=str, allow_nan=False))
    else:
        print(report.summary())
        _print_failed(report)
    # README "Exit codes": 1 = finished, but some inputs failed (this run, or before and still failing)
    return 1 if report.failed or report.skipped_failures else 0


def _print_failed(report: IndexReport) -> None:
    """The videos that could not be read, this run or before (skipped), on stderr (the first 10),
    one line each as ``extract`` lists them."""
    failed = report.failed + report.skipped_failures
    for path, reason in failed[:10]:
        print(f"  failed: {show_path(path)}: {show_path(reason)}", file=sys.stderr)
    if len(failed) > 10:
        print(f"  ... and {len(failed) - 10} more (see errors.log)", file=sys.stderr)


def _video_filter(args: argparse.Namespace) -> Any:
    """The ``VideoFilter`` of the filter options (``FilterError`` for a bad date)."""
    from ..index.filters import VideoFilter, parse_when

    return VideoFilter(under=args.under, path_glob=args.path_glob,
                       mtime_min=None if args.after is None else parse_when(args.after),
                       mtime_max=None if args.before is None else parse_when(args.before),
                       duration_min=args.min_duration, duration_max=args.max_duration)


def cmd_search(args: argparse.Namespace) -> int:
    from ..index import Index
    from ..index.filters import collection_root
    from ..index.negatives import DEFAULT_NOT_WEIGHT, check_weight

    if args.k < 1:
        raise CommandError(f"-k must be >= 1, got {args.k}")
    if args.offset < 0:
        raise CommandError(f"--offset must be >= 0, got {args.offset}")
    weight = check_weight(DEFAULT_NOT_WEIGHT if args.not_weight is None else args.not_weight)
    if args.not_weight is not None and not args.negatives:
        raise CommandError("--not-weight needs at least one --not TEXT")
    if any(not n.strip() for n in args.negatives):
        raise CommandError("--not needs a sentence, got an empty one")
    filt = _video_filter(args)
    fmt = args.format or ("json" if args.json else "csv" if args.csv else "table")
    if (args.json and fmt != "json") or (args.csv and fmt != "csv") or (args.json and args.csv):
        raise CommandError("choose one output format: --format, --json or --csv")
    queries: Iterable[str] = list(args.queries)
    if args.queries_file:
        queries = itertools.chain(queries, iter_queries_file(args.queries_file, open_queries_file(args.queries_file)))
    likes = [parse_like(x) for x in args.like or []]
    pending = batches(queries, QUERY_BATCH)
    first = next(pending, None)  # read (and check) the first queries before loading the model
    if first is None and not likes:
        raise CommandError("nothing to search: give QUERY sentences, --queries-file or --like"
                           + (" (the queries file holds none: blank and # lines are skipped)" if args.queries_file else ""))
    # Check the folder (and the filter against its videos) before loading the model (fast, clear error).
    with Index.open(args.index) as probe:
        if not filt.is_empty:
            filt = filt.validated(collection_root(r.path for r in probe.rows()))
            from ..index.filters import require_matches

            require_matches(probe.rows(), filt)
    model = _model(args, args.index)
    opts: dict[str, Any] = {"k": args.k, "merge": not args.no_merge, "by_video": args.videos, "exact": args.exact,
                            "video_filter": None if filt.is_empty else filt, "offset": args.offset}
    with Index.open(args.index, model) as index:
        mode = "exact" if args.exact or args.negatives or index.ann() is None else "ann"
        out = SearchOutput(fmt, args.videos, args.offset)
        out.k, out.fewer_note = args.k, "" if filt.is_empty else "within the filter"
        extra = ("" if filt.is_empty else f"; filter: {filt.describe()}") + (
            f"; not: {', '.join(map(repr, args.negatives))} (weight {weight:g})" if args.negatives else "")
        out.start({"index": index.directory, "mode": mode, "ann": index.ann_status()["state"],
                   "videos": index.num_videos, "windows": len(index), "offset": args.offset,
                   "filter": None if filt.is_empty else filt.describe(), "not": args.negatives,
                   "not_weight": weight if args.negatives else None},
                  f"{show_path(index.directory)}: {plural(index.num_videos, 'video')}, {plural(len(index), 'window')} ({mode} search"
                  f"{extra})")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for batch in itertools.chain([first] if first else [], pending):
                problems = [index.query_problem(q) for q in batch]
                found = index.search(batch, negatives=args.negatives, not_weight=weight, **opts)
                for q, p, res in zip(batch, problems, found):
                    out.add(q, p, res)
            for video, start in likes:
                try:
                    res = index.search_like(video, start, **opts)
                except KeyError as exc:
                    raise CommandError(f"--like {video}: {exc.args[0]}") from None
                out.add(f"like {video}@{start:g}", None, res)
        out.finish()
    return 1 if out.failed else 0  # README "Exit codes"


def cmd_remove(args: argparse.Namespace) -> int:
    from ..index import Index

    with Index.open(args.index, readonly=False) as index:
        try:
            removed = index.remove_paths(args.paths)
        except KeyError as exc:
            raise CommandError(f"{exc.args[0]}; nothing was removed") from None
        if index.num_rows and (index.num_rows - index.num_live) > 0.25 * index.num_rows:
            index.compact()
        left = index.num_videos
    if args.json:
        print(json.dumps({"removed": removed, "videos": left}))
    else:
        for p in removed:
            print(f"removed {show_path(p)}")
        print(f"{show_path(args.index)}: {plural(left, 'video')} left")
    return 0


def cmd_localize(args: argparse.Namespace) -> int:
    from ..localize import localize, plot_localization

    _check_batch(args)
    if args.k < 1:
        raise CommandError(f"-k must be >= 1, got {args.k}")
    if not os.path.isfile(args.video):
        raise MissingFileError(f"no such video file: {args.video}")
    model = _model(args, args.index)
    index = None
    if args.index:
        from ..index import Index

        index = Index.open(args.index, model)
    try:  # the index's windows (and settings) are used when it holds the video and the options agree
        loc = localize(model, args.video, args.query, k=args.k, batch_size=args.batch_size,
                       merge=not args.no_merge, index=index, progress=not args.quiet, allow_gaps=args.allow_gaps,
                       **window_overrides(args))
    finally:
        if index is not None:
            index.close()
    if args.plot:
        plot_localization(loc, args.plot)
    if args.json:
        d = loc.to_dict()
        d["plot"] = args.plot
        print(json.dumps(d))
        return 0
    s = loc.scores
    print(f"{show_path(loc.path)} ({fmt_time(loc.duration)}, {plural(len(s), 'window')}): {show_path(repr(loc.query))}")
    if len(s):
        print(f"scores: min {s.min():.3f}  median {float(sorted(s)[len(s) // 2]):.3f}  max {s.max():.3f}")
    print(f"  {'#':>3}  {'score':>8}  {'start':>9}  {'end':>9}")
    for i, (a, b, sc) in enumerate(loc.moments, 1):
        print(f"  {i:3d}  {sc:8.3f}  {fmt_time(a):>9}  {fmt_time(b):>9}")
    if args.plot:
        print(f"plot: {show_path(args.plot)}")
    return 0


# -- reading queries, writing results ------------------------------------------------------


def fmt_time(t: float) -> str:
    t = max(0.0, float(t))
    h, rem = divmod(t, 3600)
    m, s = divmod(rem, 60)
    return f"{int(h)}:{int(m):02d}:{s:04.1f}"


def print_results(query: str, moments: list, problem: str | None, by_video: bool, first: int = 1) -> None:
    print(f"\n{show_path(repr(query))}:")
    if problem:
        print(f"  no results: {problem}")
        return
    if not moments:
        print("  no results")
        return
    print(f"  {'#':>3}  {'score':>8}  {'cosine':>6}  {'pctile':>6}  {'start':>9}  {'end':>9}  "
          f"{'video (best moment)' if by_video else 'video'}")
    for i, m in enumerate(moments, first):
        gone = "  (file missing)" if not m.exists else ""
        cos = "" if m.cosine is None else f"{m.cosine:.3f}"
        pct = "" if m.percentile is None else f"{m.percentile:.1f}"
        print(f"  {i:3d}  {m.score:8.3f}  {cos:>6}  {pct:>6}  {fmt_time(m.start):>9}  {fmt_time(m.end):>9}  "
              f"{show_path(m.path)}{gone}")


CSV_FIELDS = ("query", "rank", "video_id", "path", "start", "end", "score", "cosine", "percentile", "peak", "exists")


QUERY_BATCH = 256  # queries searched (and printed) together: memory stays bounded for any number of queries
MAX_QUERY_LINE = 10_000  # characters: a longer "line" is not a query (e.g. /dev/zero, a binary file)


def open_queries_file(name: str) -> Any:
    """The queries file opened as UTF-8 text (``-``: standard input); refuses devices and folders."""
    import io

    if name == "-":
        return io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8") if hasattr(sys.stdin, "buffer") else sys.stdin
    return open_list(os.path.expanduser(name), f"--queries-file {show_path(name)}", fifo=True, encoding="utf-8",
                     error=CommandError)


def iter_queries_file(name: str, f: Any) -> Iterator[str]:
    """The queries of an opened queries file, one per line, streamed: blank lines and lines
    starting with ``#`` are skipped (comments, as in list files). Refuses what is not a text file
    of lines: NUL bytes, bytes that are not UTF-8, a line over ``MAX_QUERY_LINE`` characters."""
    try:
        for line in bounded_lines(f, f"--queries-file {show_path(name)}", max_line=MAX_QUERY_LINE,
                                  what="not a text file of queries, one per line", error=CommandError):
            q = line.strip()
            if q and not q.startswith("#"):
                yield q
    finally:
        if name != "-":
            f.close()


def batches(items: Iterable[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for x in items:
        batch.append(x)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def finite(value: Any) -> Any:
    """JSON-safe: NaN and infinities as null (``search --json`` never prints ``NaN``)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite(v) for v in value]
    return value


class SearchOutput:
    """Writes search results as they come, in one of the formats (table, json, csv)."""

    def __init__(self, fmt: str, by_video: bool, offset: int = 0) -> None:
        import csv

        self.fmt, self.by_video, self.offset = fmt, by_video, offset
        self.k, self.fewer_note = 0, ""  # a table says when a filter leaves fewer than -k results
        self.count = 0
        self.failed = 0
        self.csv = csv.writer(sys.stdout, lineterminator="\n") if fmt == "csv" else None

    def start(self, header: dict[str, Any], table_line: str) -> None:
        if self.fmt == "json":
            head = json.dumps(finite({**header, "results": []}), allow_nan=False)
            sys.stdout.write(head[:-2])  # without the closing "]}"
        elif self.csv is not None:
            self.csv.writerow(CSV_FIELDS)
        else:
            print(table_line)

    def add(self, query: str, problem: str | None, moments: list[Any]) -> None:
        if problem is not None:
            self.failed += 1
        if self.fmt == "json":
            item = {"query": query, "error": problem, "moments": [m.to_dict() for m in moments]}
            sys.stdout.write((", " if self.count else "") + json.dumps(finite(item), allow_nan=False))
        elif self.csv is not None:
            if problem is not None:
                print(f"milnce: query {query!r} failed: {problem} (no rows)", file=sys.stderr)
            for rank, m in enumerate(moments, self.offset + 1):
                d = m.to_dict()
                self.csv.writerow([query, rank, *(finite(d[f]) for f in CSV_FIELDS[2:])])
        else:
            print_results(query, moments, problem, self.by_video, self.offset + 1)
            if self.fewer_note and problem is None and len(moments) < self.k:
                print(f"  (only {plural(self.offset + len(moments), 'result')} {self.fewer_note})")
        self.count += 1

    def finish(self) -> None:
        if self.fmt == "json":
            sys.stdout.write("]}\n")
        elif self.csv is not None and self.failed:
            print(f"milnce: {self.failed} of {plural(self.count, 'query', 'queries')} failed and "
                  f"{'has' if self.failed == 1 else 'have'} no rows", file=sys.stderr)
        sys.stdout.flush()
