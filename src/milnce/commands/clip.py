"""``milnce clip``: save a moment of an indexed video as a file of its own (``milnce.video.cut``)."""

from __future__ import annotations

import argparse
import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

from ..printable import show_path
from ..timespec import parse_span, parse_time
from .common import add_index_option
from .vocabulary import add_collection_option

__all__ = ["register", "cmd_clip", "parse_span", "parse_time"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "clip",
        help="save a moment of an indexed video as a new video file",
        description="Cut VIDEO from START to END seconds (as a search result shows them) into a new file. "
        "By default the span is re-encoded (H.264 + AAC): an exact cut with the audio. --copy copies the "
        "streams unchanged from the key frame at or before START instead: fast and lossless, but the clip "
        "starts early (up to one key-frame interval). The video must still be the indexed file (same size and "
        "modification time), else re-run milnce index. Nothing is written but the clip.",
    )
    p.add_argument("span", metavar="VIDEO@START-END",
                   help="an indexed video (its path, or its id as 'milnce search' shows it) and the span, "
                   "times as seconds or [H:]M:SS, e.g. 12@1:05-1:20 or cooking.mp4@65-80.5")
    add_index_option(p, "index folder (from 'milnce index'), or a Milvus .db file or http(s)://host:port", required=True,
                     legacy="span")
    add_collection_option(p)
    p.add_argument("--out", metavar="FILE|DIR", default=None,
                   help="the clip's file (.mp4, .m4v, .mov or .mkv), or a folder to write it into under a name "
                   "that says the source and the span (default: that name in the current folder)")
    p.add_argument("--copy", action="store_true", help="stream copy from the previous key frame (no re-encoding)")
    p.add_argument("--padding", type=float, default=0.0, metavar="SECONDS",
                   help="extend the span by this many seconds on both sides, within the video (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing file at --out")
    p.set_defaults(func=cmd_clip)


def cmd_clip(args: argparse.Namespace) -> int:
    from ..index import clip_output, clip_source, find_video, open_clip_source, open_index
    from ..video import cut_clip

    video, start, end = parse_span(args.span)
    with open_index(args.index, collection=args.collection) as index:
        src = clip_source(index, find_video(index, video, args.index))
    rec = src.record
    out = clip_output(args.out, rec, start, end, padding=args.padding, overwrite=args.overwrite)
    with open_clip_source(src) as fh, _term_as_interrupt():
        res = cut_clip(fh, start, end, out, copy=args.copy, padding=args.padding, duration=rec.duration,
                       overwrite=args.overwrite, name=rec.path)
    how = "copied from the key frame at" if res.copy else "re-encoded from"
    print(f"wrote {show_path(res.path)}: {res.duration:.2f} s ({res.frames} frames{', with audio' if res.audio else ''}), "
          f"{how} {res.start:.2f} s to {res.end:.2f} s of {show_path(rec.path)}")
    return 0


@contextlib.contextmanager
def _term_as_interrupt() -> Iterator[None]:
    """SIGTERM interrupts the cut as Ctrl-C does (the half-written clip is removed: nothing but a
    complete clip is ever left)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
