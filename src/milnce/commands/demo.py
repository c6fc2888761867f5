"""``milnce demo``: index a few videos and answer queries, end to end, on any machine.

With the published weights (downloaded into the cache, or --weights/--vocab): the three demo GIFs
(waterfall, guitar, car drifting; online) or --videos DIR. When the published weights cannot be
had (no network, dead links, a checksum mismatch) the demo says so in one line and runs on a
small model trained here on generated videos (``milnce.train.fallback``), cached for the next run.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shlex
import sys
import warnings
from pathlib import Path
from typing import Any

from ..plural import plural
from .common import (
    CommandError,
    add_index_option,
    add_model_options,
    add_window_options,
    model_from_args,
    window_overrides,
    window_settings,
)
from .search import print_results

DEMO_VIDEOS = (
    ("https://upload.wikimedia.org/wikipedia/commons/b/b0/YosriAirTerjun.gif", "waterfall"),
    ("https://upload.wikimedia.org/wikipedia/commons/e/e6/Guitar_solo_gif.gif", "playing guitar"),
    ("https://upload.wikimedia.org/wikipedia/commons/3/30/2009-08-16-autodrift-by-RalfR-gif-by-wau.gif", "car drifting"),
)
SYNTHETIC_QUERIES = 3  # held-out captions asked when the videos are the generated ones
_OFFLINE_HINT = ("on a machine without internet, pass --weights FILE --vocab FILE (the published "
                 "s3d_howto100m.pth and s3d_dict.npy) and --videos DIR (a folder with a few videos)")


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


class _Demo:
    """What the demo runs on: the model, its name for the output, the videos and what each shows."""

    def __init__(self, model: Any, short: str, label: str, videos: list[str], shows: dict[str, list[str]],
                 queries: list[str], expected: dict[str, str]) -> None:
        self.model, self.short, self.label, self.videos, self.shows = model, short, label, videos, shows
        self.queries, self.expected = queries, expected
        self.stride: int | None = None  # the index's window stride when not given (None: the model's default)


def cmd_demo(args: argparse.Namespace) -> int:
    from ..cache import cache_dir
    from ..index import Index, build_index

    window_settings(args)  # a bad window option fails before anything is downloaded or built
    if args.k < 1:
        raise CommandError(f"-k must be >= 1, got {args.k}")
    demo = _setup(args)
    from ..printable import show_path

    print(f"model: {demo.label}")
    index_dir = args.index or str(Path(cache_dir()) / "demo" / f"index-{demo.model.weights_id}")
    overrides = window_overrides(args)
    if overrides["stride"] is None:
        overrides["stride"] = demo.stride
    report = build_index(demo.videos, index_dir, demo.model, progress=not args.quiet, batch_size=args.batch_size,
                         allow_gaps=getattr(args, "allow_gaps", False), **overrides)
    print(report.summary())
    for path, reason in report.failed[:10]:
        print(f"  failed: {show_path(path)}: {show_path(reason)}", file=sys.stderr)
    queries = args.query or demo.queries
    with Index.open(index_dir, demo.model) as index:
        live = {os.path.abspath(v) for v in demo.videos}
        k = max(1, min(args.k, index.num_videos))
        for q in queries:
            problem = index.query_problem(q)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = [] if problem else index.search(q, k=index.num_videos, by_video=True)
            ranked = [m for m in res if m.path in live]
            print_results(q, ranked[:k], problem, True)
            if ranked:
                print(f"  -> best match ({demo.short}): {show_path(os.path.basename(ranked[0].path))}"
                      + _verdict(demo, q, [os.path.basename(m.path) for m in ranked]))
        if demo.expected and not args.query:
            print(_held_out_summary(index, demo, live))
    _print_next(args, index_dir, demo)
    return 1 if report.failed or report.skipped_failures else 0  # as milnce index


def _verdict(demo: _Demo, query: str, ranked: list[str]) -> str:
    """What the best match shows and, for a held-out caption, where the video it describes came."""
    shows = demo.shows.get(next((v for v in demo.shows if os.path.basename(v) == ranked[0]), ""))
    want = demo.expected.get(query)
    if want is None:
        return f" (the {shows[0]!r} video)" if shows else ""
    if ranked[0] == want:
        return f" (right: it shows {query!r})"
    rank = ranked.index(want) + 1 if want in ranked else None
    where = f"is #{rank} of {len(ranked)}" if rank else "was not found"
    return f" (it shows {' then '.join(repr(s) for s in shows or [])}; the video of this caption, {want}, {where})"


def _held_out_summary(index: Any, demo: _Demo, live: set[str]) -> str:
    """The best matches over every held-out caption: how often the video it describes comes first
    or in the first five."""
    first = top5 = n = 0
    by_name = {os.path.basename(v): caps for v, caps in demo.shows.items()}
    for name, captions in sorted(by_name.items()):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            found = index.search(list(captions), k=index.num_videos, by_video=True)
        for res in found:
            ranked = [os.path.basename(m.path) for m in res if m.path in live]
            n += 1
            first += bool(ranked) and ranked[0] == name
            top5 += name in ranked[:5]
    videos = len(by_name)
    return (f"\nAll {n} held-out captions ({demo.short}): the video it describes comes first for {first} "
            f"({100 * first / max(n, 1):.0f}%) and in the first five for {top5} ({100 * top5 / max(n, 1):.0f}%); "
            f"by chance: {100 / max(videos, 1):.0f}% and {100 * min(5, videos) / max(videos, 1):.0f}% "
            f"of {plural(videos, 'video')}")


def _print_next(args: argparse.Namespace, index_dir: str, demo: _Demo) -> None:
    model_opts = "".join(f" --{opt} {shlex.quote(str(getattr(args, opt)))}" for opt in ("weights", "vocab")
                         if getattr(args, opt, None))
    example = demo.queries[0] if demo.queries else "your words"
    print(f"\nSearch it yourself:  milnce search --index {shlex.quote(index_dir)} {shlex.quote(example)}{model_opts}")
    serve = f"Browse it in a web page:  milnce serve --index {shlex.quote(index_dir)}{model_opts}"
    if importlib.util.find_spec("fastapi") is None or importlib.util.find_spec("uvicorn") is None:
        serve += "  (needs pip install 'milnce[serve]')"
    print(serve + ", then open http://127.0.0.1:8000/")


# ----------------------------------------------------------------------------- what the demo runs on


def _setup(args: argparse.Namespace) -> _Demo:
    from ..api import env_path

    own_weights = bool(args.weights or env_path("MILNCE_WEIGHTS"))
    if own_weights:
        model = _load(args)
        short = "your weights"
        label = f"your weights {args.weights or env_path('MILNCE_WEIGHTS')} (id {model.weights_id})"
    else:
        model = _published(args)
        if model is None:  # the published weights cannot be had: the small model trained here
            return _synthetic_demo(args)
        short = model.info.name
        label = f"{model.info.name}, the published weights ({model.info.description})"
    if args.videos:
        return _Demo(model, short, label, _folder_videos(args.videos), {}, [q for _, q in DEMO_VIDEOS], {})
    gifs = _gifs(args)
    if gifs is None:
        return _held_out_demo(model, short, label, _generated_videos(args))
    shows = {os.path.abspath(path): [q] for path, q in gifs}
    return _Demo(model, short, label, [p for p, _ in gifs], shows, [q for _, q in DEMO_VIDEOS], {})


def _load(args: argparse.Namespace) -> Any:
    import torch

    torch.set_num_threads(max(1, min(torch.get_num_threads(), os.cpu_count() or 1)))
    return model_from_args(args)


def _published(args: argparse.Namespace) -> Any:
    """The published model, or None (after one line saying why) when it cannot be had and the
    fallback is allowed."""
    from ..api import MissingFileError
    from ..download import DownloadError, ensure_weights
    from ..mirrors import MirrorError
    from ..weights import DEFAULT_WEIGHTS, REGISTRY, CheckpointError

    try:
        if not args.no_download:  # a quick try per source: the demo has somewhere else to go
            ensure_weights(REGISTRY[DEFAULT_WEIGHTS], progress=not args.quiet, retries=1)
        return _load(args)
    except (DownloadError, MirrorError, MissingFileError, CheckpointError) as exc:
        if args.no_fallback:
            raise CommandError(f"could not download the published weights ({exc}); {_OFFLINE_HINT}") from exc
        why = str(exc).replace("\n", " ")
        print(f"milnce: the published weights are not available: {why}. Running the demo on a small model trained "
              "here on generated videos instead (--no-fallback: stop here).", file=sys.stderr)
        return None


def _folder_videos(folder: str) -> list[str]:
    from ..index import find_videos

    if not os.path.isdir(folder):
        raise CommandError(f"--videos {folder}: no such folder")
    videos = find_videos([folder])
    if not videos:
        raise CommandError(f"--videos {folder}: no video files in that folder")
    return videos


def _gifs(args: argparse.Namespace) -> list[tuple[str, str]] | None:
    """The three demo GIFs (downloaded once), or None after one line when they cannot be had."""
    from .. import download as dl
    from ..cache import cache_dir

    demo = Path(cache_dir()) / "demo"
    demo.mkdir(parents=True, exist_ok=True)
    out = []
    for url, label in DEMO_VIDEOS:
        dest = demo / url.rsplit("/", 1)[1]
        if not dest.is_file() or dest.stat().st_size == 0:
            try:
                dl.download(url, dest, timeout=30, retries=1, progress=not args.quiet)
            except (dl.DownloadError, OSError) as exc:
                print(f"milnce: could not download the demo video {url} ({exc}); indexing generated videos "
                      "instead (--videos DIR: your own)", file=sys.stderr)
                return None
        out.append((str(dest), label))
    return out


def _generated_videos(args: argparse.Namespace) -> Path:
    from ..train.fallback import held_out_data

    return held_out_data(progress=not args.quiet)


def _synthetic_demo(args: argparse.Namespace) -> _Demo:
    from ..api import load_model
    from ..cache import cache_dir
    from ..errors import MilnceError
    from ..printable import show_path
    from ..train.fallback import fallback_model

    try:
        fb = fallback_model(progress=not args.quiet)
    except OSError as exc:
        if isinstance(exc, MilnceError):
            raise
        raise CommandError(f"cannot build the fallback model in {show_path(str(cache_dir()))} ($MILNCE_HOME): "
                           f"{exc.strerror or exc}") from exc
    model = load_model(fb.run, device=args.device, fast=not args.eager, precision=args.precision)
    r5 = fb.held_out.get("R@5")
    facts = [f"held-out R@5 {r5:.0f}%" if r5 is not None else "",
             f"trained here in {fb.seconds:.0f} s" if fb.built else f"cached in {show_path(str(fb.root))}"]
    label = ("the fallback model: a small S3D trained on generated videos of moving coloured shapes, not the published "
             f"weights ({', '.join(f for f in facts if f)}; words it knows: colours, shapes, directions)")
    demo = _held_out_demo(model, "fallback model", label, fb.data)
    demo.stride = max(1, model.info.num_frames // 2)  # 2 s windows over 4 s scenes: one every second
    return demo


def _held_out_demo(model: Any, short: str, label: str, data: Path) -> _Demo:
    """The generated held-out videos and, as queries, the captions of the first few."""
    from ..train.fallback import held_out

    videos, captions = held_out(data)
    shows = {os.path.abspath(v): captions[os.path.basename(v)] for v in videos}
    queries, expected = [], {}
    for v in videos[:SYNTHETIC_QUERIES]:
        first = captions[os.path.basename(v)][0]
        queries.append(first)
        expected[first] = os.path.basename(v)
    return _Demo(model, short, label, [str(v) for v in videos], shows, queries, expected)
