"""Search commands: index, search, remove, localize (``milnce demo``: ``commands/demo.py``), and
how ``milnce search`` reads its queries and writes its results: the queries file streamed in
batches with bounded memory (``iter_queries_file``), and the result formats (table, JSON, CSV)
written as they come (``SearchOutput``; ``print_results``, the table ``milnce demo`` prints too)."""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import warnings
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from ..index import IndexReport

from ..errors import MissingFileError
from ..plural import plural
from ..printable import show_path
from ..timespec import parse_clip_file, parse_like
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
    run_options,
    window_overrides,
    window_settings,
)
from .search_output import (
    QUERY_BATCH,
    SearchOutput,
    batches,
    finite,
    fmt_time,
    iter_queries_file,
    open_queries_file,
)
from .vocabulary import add_collection_option


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
    add_index_option(p, "index folder (created if needed), or a Milvus .db file or http(s)://host:port", required=True)
    add_collection_option(p)
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
    p.add_argument("--subtitle-langs", metavar="LANGS",
                   help="subtitle languages to index, comma-separated (en,de,pt-BR; 'en' takes en-US too; untagged "
                   "files and streams always; 'none': no subtitles). Default: every language. Subtitles are "
                   "NAME.vtt/.srt and NAME.LANG.vtt/.srt beside each video (beside each feature file with "
                   "--from-features) and text subtitle streams inside the videos")
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
    add_index_option(p, "index folder (from 'milnce index'), or a Milvus .db file or http(s)://host:port", required=True,
                     legacy="queries")
    add_collection_option(p)
    p.add_argument("--queries-file", metavar="FILE", help="more queries, one per line ('-': standard input)")
    p.add_argument("--like", metavar="VIDEO[@START]", action="append",
                   help="query by example: moments like the window of VIDEO (a path, or an indexed video's id) "
                   "starting nearest START seconds (default 0; also M:SS); the example's own video is left out")
    p.add_argument("--like-file", metavar="CLIP[@START-END]", action="append",
                   help="query by any clip: moments like a video file of yours (its START-END span, seconds or "
                   "M:SS; default all of it) or a still image (.jpg/.png, a frozen clip: S3D then sees no motion), "
                   "embedded with the index's window settings; its windows' L2-normalised embeddings are averaged")
    p.add_argument("-k", type=int, default=10, help="results per query (default 10)")
    videos = p.add_argument("--list-videos", dest="videos", action="store_true",
                            help="rank whole videos (by their best moment)")
    deprecated_alias(p, videos, "--videos")
    p.add_argument("--no-merge", action="store_true", help="list single windows instead of moments")
    p.add_argument("--exact", action="store_true", help="exact search even if an ANN index exists")
    p.add_argument("--mode", choices=("visual", "speech", "hybrid"), default=None,
                   help="score the pictures (visual), the subtitles (speech) or both (hybrid). Default: hybrid "
                   "where the index has transcripts, else visual (the output says which)")
    p.add_argument("--speech-weight", type=float, default=None, metavar="W",
                   help="hybrid: a window's score is visual + W x (speech score 0..1) x the query's visual scale; "
                   "a full speech match adds W in cosine units (default 0.1)")
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
    add_index_option(p, "index folder, or a Milvus .db file or http(s)://host:port", required=True, legacy="paths", keep=1)
    add_collection_option(p)
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
    add_collection_option(p)
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


def _is_milvus(uri: str | None) -> bool:
    from ..index import is_milvus_uri

    return is_milvus_uri(uri)


def _open_index(uri: str, model: Any = None, *, readonly: bool = True, collection: str | None = None) -> Any:
    """The index at ``uri``: a folder or a Milvus collection (``milnce.index.backends``)."""
    from ..index import open_index

    return open_index(uri, model, readonly=readonly, collection=collection)


def _check_batch(args: argparse.Namespace) -> None:
    """Validate the window options (one-line ``UsageError``) before anything is created or loaded."""
    window_settings(args)


def cmd_index(args: argparse.Namespace) -> int:
    from ..index import build_index, find_videos, index_window

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
    if not _is_milvus(args.index) and os.path.isdir(args.index):  # say so before loading the model if another run holds the folder
        from ..index import check_unlocked

        check_unlocked(args.index)
    model = _model(args)
    run = run_options(args, device=model.device)
    window = index_window(args.index, model, allow_gaps=args.allow_gaps, collection=args.collection,
                          **window_overrides(args))
    extra = {} if args.ann_min_windows is None else {"ann_min_windows": args.ann_min_windows}
    report = build_index(args.paths, args.index, model, window=window, run=run, prune=args.prune, ann=args.ann,
                         progress=not args.quiet and not args.json, recursive=not args.no_recursive,
                         retry_errors=args.retry_errors, roots=args.root or [], allow_gaps=args.allow_gaps,
                         collection=args.collection, subtitle_langs=_langs(args), **extra)
    return _print_report(args, report)


def _index_from_features(args: argparse.Namespace) -> int:
    from ..index import index_features

    if args.paths:
        raise CommandError("give either videos (PATH...) or --from-features DIR, not both")
    if _is_milvus(args.index):
        raise CommandError("--from-features builds a folder index: build it, then milnce migrate FOLDER --to "
                           f"{args.index}")
    if os.path.isdir(args.index):
        from ..index import check_unlocked

        check_unlocked(args.index)
    extra = {} if args.ann_min_windows is None else {"ann_min_windows": args.ann_min_windows}
    report = index_features(args.from_features, args.index, prune=args.prune, ann=args.ann,
                            settings=window_overrides(args), progress=not args.quiet and not args.json,
                            roots=args.root or [], subtitle_langs=_langs(args), **extra)
    return _print_report(args, report)


def _langs(args: argparse.Namespace) -> tuple[str, ...] | None:
    """``--subtitle-langs`` as language tags (None: every language)."""
    from ..video import SubtitleError, parse_langs

    try:
        return parse_langs(args.subtitle_langs)
    except SubtitleError as exc:
        raise CommandError(str(exc)) from None


def _record_roots(args: argparse.Namespace) -> int:
    """``milnce index --index DIR --root ROOT...``: record collection roots of an existing index."""
    from ..index import DB_NAME

    if not _is_milvus(args.index) and not os.path.isfile(os.path.join(args.index, DB_NAME)):
        raise CommandError(f"--root without PATHs records roots of an existing index; there is none at {args.index}")
    with _open_index(args.index, readonly=False, collection=args.collection) as index:
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
    from ..index import VideoFilter, parse_when

    return VideoFilter(under=args.under, path_glob=args.path_glob,
                       mtime_min=None if args.after is None else parse_when(args.after),
                       mtime_max=None if args.before is None else parse_when(args.before),
                       duration_min=args.min_duration, duration_max=args.max_duration)


def cmd_search(args: argparse.Namespace) -> int:
    from ..index import DEFAULT_NOT_WEIGHT, check_speech_weight, check_weight, collection_root

    if args.k < 1:
        raise CommandError(f"-k must be >= 1, got {args.k}")
    if args.offset < 0:
        raise CommandError(f"--offset must be >= 0, got {args.offset}")
    weight = check_weight(DEFAULT_NOT_WEIGHT if args.not_weight is None else args.not_weight)
    speech_weight = check_speech_weight(args.speech_weight)
    if args.speech_weight is not None and args.mode in ("visual", "speech"):
        raise CommandError(f"--speech-weight weighs speech against pictures: it needs --mode hybrid, not {args.mode}")
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
    clips = [parse_clip_file(x) for x in args.like_file or []]
    for path, _, _ in clips:  # before the model loads
        if not os.path.isfile(path):
            raise MissingFileError(f"--like-file: no such file: {show_path(path)}")
    pending = batches(queries, QUERY_BATCH)
    first = next(pending, None)  # read (and check) the first queries before loading the model
    if first is None and not likes and not clips:
        raise CommandError("nothing to search: give QUERY sentences, --queries-file, --like or --like-file"
                           + (" (the queries file holds none: blank and # lines are skipped)" if args.queries_file else ""))
    # Check the folder (and the filter against its videos) before loading the model (fast, clear error).
    with _open_index(args.index, collection=args.collection) as probe:
        if not filt.is_empty:
            filt = filt.validated(collection_root(r.path for r in probe.rows()))
            from ..index import require_matches

            require_matches(probe.rows(), filt)
    model = _model(args, args.index)
    opts: dict[str, Any] = {"k": args.k, "merge": not args.no_merge, "by_video": args.videos, "exact": args.exact,
                            "video_filter": None if filt.is_empty else filt, "offset": args.offset}
    with _open_index(args.index, model, collection=args.collection) as index:
        mode = "exact" if args.exact or args.negatives or index.ann() is None else "ann"
        scoring, scoring_note = index.search_mode(args.mode)
        opts.update(mode=scoring, speech_weight=speech_weight)
        out = SearchOutput(fmt, args.videos, args.offset)
        out.k, out.fewer_note = args.k, "" if filt.is_empty else "within the filter"
        extra = ("" if filt.is_empty else f"; filter: {filt.describe()}") + (
            f"; not: {', '.join(map(repr, args.negatives))} (weight {weight:g})" if args.negatives else "")
        out.start({"index": index.directory, "mode": mode, "ann": index.ann_status()["state"],
                   "videos": index.num_videos, "windows": len(index), "offset": args.offset,
                   "filter": None if filt.is_empty else filt.describe(), "not": args.negatives,
                   "not_weight": weight if args.negatives else None, "scoring": scoring,
                   "speech_weight": speech_weight if scoring == "hybrid" else None},
                  f"{show_path(index.directory)}: {plural(index.num_videos, 'video')}, {plural(len(index), 'window')} ({mode} search"
                  f"{extra}; {scoring_note}{f', speech weight {speech_weight:g}' if scoring == 'hybrid' else ''})")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for batch in itertools.chain([first] if first else [], pending):
                problems = [index.query_problem(q) if scoring == "visual" or not q.strip() else None for q in batch]
                found = index.search(batch, negatives=args.negatives, not_weight=weight, **opts)
                for q, p, res in zip(batch, problems, found):
                    out.add(q, p, res)
            like_opts = {k: v for k, v in opts.items() if k not in ("mode", "speech_weight")}  # pictures only
            for video, start in likes:
                try:
                    res = index.search_like(video, start, **like_opts)
                except KeyError as exc:
                    raise CommandError(f"--like {video}: {exc.args[0]}") from None
                out.add(f"like {video}@{start:g}", None, res)
            for spec, clip in zip(args.like_file or [], clips):
                out.add(f"like-file {spec}", None, search_clip(index, *clip, negatives=args.negatives,
                                                                not_weight=weight, **opts))
        out.finish()
    return 1 if out.failed else 0  # README "Exit codes"


def search_clip(index: Any, path: str, start: float | None, end: float | None, *, negatives: list[str],
                not_weight: float, **opts: Any) -> list[Any]:
    """``--like-file``: the moments like a clip file (``milnce.index.likeclip.clip_query``), ranked
    as a text query is (filters, negative terms, pages); always visual: a clip has no words."""
    from ..index import clip_query

    opts = {**opts, "mode": "visual", "speech_weight": None}
    q = clip_query(index.model, index.settings, path, start, end)
    neg = index.negative_embeddings(negatives)
    return index.search_embeddings(q.vector, neg=neg, not_weight=not_weight, **opts)[0]


def cmd_remove(args: argparse.Namespace) -> int:
    with _open_index(args.index, readonly=False, collection=args.collection) as index:
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
        index = _open_index(args.index, model, collection=args.collection)
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
