"""The demo, end to end on any machine: what it runs on and how its answers are judged.

``choose_demo`` picks the model (your weights, the published ones, or the fallback model trained
here on generated videos after one logged line saying why) and the videos (yours, the three GIFs,
or the generated held-out ones); ``build_demo_index`` indexes them; ``answer`` ranks the videos
for one query and says whether the best match is right; ``held_out_score`` counts how often the
described video comes first over every held-out caption. ``milnce demo`` parses and prints.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import MilnceError
from .printable import show_path

if TYPE_CHECKING:  # pragma: no cover
    from .api import MILNCE, Precision
    from .index import IndexReader, IndexReport, Moment
    from .runoptions import RunOptions

__all__ = ["DEMO_VIDEOS", "SYNTHETIC_QUERIES", "OFFLINE_HINT", "Demo", "DemoError", "Answer", "HeldOutScore",
           "choose_demo", "demo_index_dir", "build_demo_index", "answer", "verdict", "held_out_score"]

logger = logging.getLogger("milnce.demo")

DEMO_VIDEOS = (
    ("https://upload.wikimedia.org/wikipedia/commons/b/b0/YosriAirTerjun.gif", "waterfall"),
    ("https://upload.wikimedia.org/wikipedia/commons/e/e6/Guitar_solo_gif.gif", "playing guitar"),
    ("https://upload.wikimedia.org/wikipedia/commons/3/30/2009-08-16-autodrift-by-RalfR-gif-by-wau.gif", "car drifting"),
)
SYNTHETIC_QUERIES = 3  # held-out captions asked when the videos are the generated ones
OFFLINE_HINT = ("on a machine without internet, pass --weights FILE --vocab FILE (the published "
                "s3d_howto100m.pth and s3d_dict.npy) and --videos DIR (a folder with a few videos)")


class DemoError(MilnceError, RuntimeError):
    """The demo cannot run: the published weights are missing and the fallback is refused, or the
    fallback model cannot be built in the cache folder."""


@dataclass
class Demo:
    """What the demo runs on: the model, its short name and label for the output, the videos and
    what each shows (absolute path -> captions), the queries, the expected video of each held-out
    caption (caption -> file name) and the index's window stride when not given (None: the model's)."""

    model: Any
    short: str
    label: str
    videos: list[str]
    shows: dict[str, list[str]] = field(default_factory=dict)
    queries: list[str] = field(default_factory=list)
    expected: dict[str, str] = field(default_factory=dict)
    stride: int | None = None

    @property
    def live(self) -> set[str]:
        """The demo's videos as absolute paths (an index may hold others from an earlier run)."""
        return {os.path.abspath(v) for v in self.videos}


@dataclass(frozen=True)
class Answer:
    """One query's answer: why it cannot be asked (``problem``), the demo's videos best first
    (``ranked``: one moment each) and the verdict on the best match ("" when there is none)."""

    query: str
    problem: str | None
    ranked: list[Moment]
    verdict: str


@dataclass(frozen=True)
class HeldOutScore:
    """Over every held-out caption (``captions``): how often the video it describes came first
    (``first``) and in the first five (``top5``), out of ``videos`` videos."""

    captions: int
    first: int
    top5: int
    videos: int


def choose_demo(load: Callable[[], MILNCE], *, own_weights: str | None, videos: list[str] | None,
                download: bool = True, fallback: bool = True, progress: bool = True, device: str = "cpu",
                fast: bool = True, precision: Precision = "fp32") -> Demo:
    """What the demo runs on. ``load`` loads the model the options name; ``own_weights``: the
    weights the user named (option or ``$MILNCE_WEIGHTS``; None: the published ones, downloaded
    unless ``download`` is false); ``videos``: the user's videos (None: the GIFs, else the
    generated held-out videos). Without the published weights, the fallback model trained here
    (``device``/``fast``/``precision`` load it) unless ``fallback`` is false (``DemoError``)."""
    if own_weights:
        model = _load(load)
        short = "your weights"
        label = f"your weights {own_weights} (id {model.weights_id})"
    else:
        published = _published(load, download=download, fallback=fallback, progress=progress)
        if published is None:  # the published weights cannot be had: the small model trained here
            return _synthetic_demo(progress=progress, device=device, fast=fast, precision=precision)
        model = published
        short = model.info.name
        label = f"{model.info.name}, the published weights ({model.info.description})"
    if videos is not None:
        return Demo(model, short, label, list(videos), {}, [q for _, q in DEMO_VIDEOS], {})
    gifs = _gifs(progress)
    if gifs is None:
        from .train import held_out_data

        return _held_out_demo(model, short, label, held_out_data(progress=progress))
    shows = {os.path.abspath(path): [q] for path, q in gifs}
    return Demo(model, short, label, [p for p, _ in gifs], shows, [q for _, q in DEMO_VIDEOS], {})


def demo_index_dir(demo: Demo) -> str:
    """The demo's default index folder: ``$MILNCE_HOME/demo/index-<weights id>``."""
    from .cache import cache_dir

    return str(Path(cache_dir()) / "demo" / f"index-{demo.model.weights_id}")


def build_demo_index(demo: Demo, index_dir: str, *, window: dict[str, Any], run: RunOptions | None = None,
                     allow_gaps: bool = False, progress: bool = True) -> IndexReport:
    """Index the demo's videos into ``index_dir`` (``build_index``); ``window``: the given window
    options (fps, num_frames, size, stride; None where left out), the demo's stride by default,
    turned into the index's ``WindowSettings`` once (``index_window``); ``run``: batch size, workers."""
    from .index import build_index, index_window

    given = dict(window)
    if given.get("stride") is None:
        given["stride"] = demo.stride
    settings = index_window(index_dir, demo.model, allow_gaps=allow_gaps, **given)
    return build_index(demo.videos, index_dir, demo.model, window=settings, run=run, progress=progress,
                       allow_gaps=allow_gaps)


def answer(index: IndexReader, demo: Demo, query: str) -> Answer:
    """The demo's videos ranked for ``query`` (one moment each, best first) and the verdict on the
    best match."""
    problem = index.query_problem(query)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = [] if problem else index.search(query, k=index.num_videos, by_video=True)
    live = demo.live
    ranked = [m for m in res if m.path in live]
    said = verdict(demo, query, [os.path.basename(m.path) for m in ranked]) if ranked else ""
    return Answer(query, problem, ranked, said)


def verdict(demo: Demo, query: str, ranked: list[str]) -> str:
    """What the best match (``ranked[0]``, a file name) shows and, for a held-out caption, where
    the video it describes came (" (...)"; "" when nothing is known of it)."""
    shows = demo.shows.get(next((v for v in demo.shows if os.path.basename(v) == ranked[0]), ""))
    want = demo.expected.get(query)
    if want is None:
        return f" (the {shows[0]!r} video)" if shows else ""
    if ranked[0] == want:
        return f" (right: it shows {query!r})"
    rank = ranked.index(want) + 1 if want in ranked else None
    where = f"is #{rank} of {len(ranked)}" if rank else "was not found"
    return f" (it shows {' then '.join(repr(s) for s in shows or [])}; the video of this caption, {want}, {where})"


def held_out_score(index: IndexReader, demo: Demo) -> HeldOutScore:
    """The best matches over every held-out caption: how often the video it describes comes first
    or in the first five."""
    first = top5 = n = 0
    live = demo.live
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
    return HeldOutScore(n, first, top5, len(by_name))


# ----------------------------------------------------------------------------- what the demo runs on


def _load(load: Callable[[], MILNCE]) -> MILNCE:
    import torch

    torch.set_num_threads(max(1, min(torch.get_num_threads(), os.cpu_count() or 1)))
    return load()


def _published(load: Callable[[], MILNCE], *, download: bool, fallback: bool, progress: bool) -> MILNCE | None:
    """The published model, or None (after one line saying why) when it cannot be had and the
    fallback is allowed."""
    from .download import DownloadError, ensure_weights
    from .errors import MissingFileError
    from .mirrors import MirrorError
    from .weights import DEFAULT_WEIGHTS, REGISTRY, CheckpointError

    try:
        if download:  # a quick try per source: the demo has somewhere else to go
            ensure_weights(REGISTRY[DEFAULT_WEIGHTS], progress=progress, retries=1)
        return _load(load)
    except (DownloadError, MirrorError, MissingFileError, CheckpointError) as exc:
        if not fallback:
            raise DemoError(f"could not download the published weights ({exc}); {OFFLINE_HINT}") from exc
        logger.warning("the published weights are not available: %s. Running the demo on a small model trained "
                       "here on generated videos instead (--no-fallback: stop here).", str(exc).replace("\n", " "))
        return None


def _gifs(progress: bool) -> list[tuple[str, str]] | None:
    """The three demo GIFs (downloaded once), or None after one line when they cannot be had."""
    from . import download as dl
    from .cache import cache_dir

    demo = Path(cache_dir()) / "demo"
    demo.mkdir(parents=True, exist_ok=True)
    out = []
    for url, label in DEMO_VIDEOS:
        dest = demo / url.rsplit("/", 1)[1]
        if not dest.is_file() or dest.stat().st_size == 0:
            try:
                dl.download(url, dest, timeout=30, retries=1, progress=progress)
            except (dl.DownloadError, OSError) as exc:
                logger.warning("could not download the demo video %s (%s); indexing generated videos "
                               "instead (--videos DIR: your own)", url, str(exc))
                return None
        out.append((str(dest), label))
    return out


def _synthetic_demo(*, progress: bool, device: str, fast: bool, precision: Precision) -> Demo:
    from .api import load_model
    from .cache import cache_dir
    from .train import fallback_model

    try:
        fb = fallback_model(progress=progress)
    except OSError as exc:
        if isinstance(exc, MilnceError):
            raise
        raise DemoError(f"cannot build the fallback model in {show_path(str(cache_dir()))} ($MILNCE_HOME): "
                        f"{exc.strerror or exc}") from exc
    model = load_model(fb.run, device=device, fast=fast, precision=precision)
    r5 = fb.held_out.get("R@5")
    facts = [f"held-out R@5 {r5:.0f}%" if r5 is not None else "",
             f"trained here in {fb.seconds:.0f} s" if fb.built else f"cached in {show_path(str(fb.root))}"]
    label = ("the fallback model: a small S3D trained on generated videos of moving coloured shapes, not the published "
             f"weights ({', '.join(f for f in facts if f)}; words it knows: colours, shapes, directions)")
    demo = _held_out_demo(model, "fallback model", label, fb.data)
    demo.stride = max(1, model.info.num_frames // 2)  # 2 s windows over 4 s scenes: one every second
    return demo


def _held_out_demo(model: MILNCE, short: str, label: str, data: Path) -> Demo:
    """The generated held-out videos and, as queries, the captions of the first few."""
    from .train import held_out

    videos, captions = held_out(data)
    shows = {os.path.abspath(v): captions[os.path.basename(v)] for v in videos}
    queries, expected = [], {}
    for v in videos[:SYNTHETIC_QUERIES]:
        first = captions[os.path.basename(v)][0]
        queries.append(first)
        expected[first] = os.path.basename(v)
    return Demo(model, short, label, [str(v) for v in videos], shows, queries, expected)
