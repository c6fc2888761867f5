"""``milnce clip``: save a moment of an indexed video as a file of its own (``milnce.video.cut``)."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, BinaryIO

from ..printable import show_path
from ..timespec import parse_span, parse_time
from .common import CommandError, add_index_option

if TYPE_CHECKING:  # pragma: no cover
    from ..index import SearchableIndex

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
    add_index_option(p, "index folder (from 'milnce index')", required=True, legacy="span")
    p.add_argument("--out", metavar="FILE|DIR", default=None,
                   help="the clip's file (.mp4, .m4v, .mov or .mkv), or a folder to write it into under a name "
                   "that says the source and the span (default: that name in the current folder)")
    p.add_argument("--copy", action="store_true", help="stream copy from the previous key frame (no re-encoding)")
    p.add_argument("--padding", type=float, default=0.0, metavar="SECONDS",
                   help="extend the span by this many seconds on both sides, within the video (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing file at --out")
    p.set_defaults(func=cmd_clip)


def cmd_clip(args: argparse.Namespace) -> int:
    from ..index import IndexReader
    from ..video.cut import CONTAINERS, clip_file_name, cut_clip

    video, start, end = parse_span(args.span)
    with IndexReader.open(args.index) as index:
        if isinstance(video, int):
            try:
                rec = index.video(video)
            except KeyError as exc:
                raise CommandError(str(exc.args[0])) from None
        else:
            found = index.video_by_path(video)
            if found is None:
                raise CommandError(f"{video} is not in the index {args.index} (give an indexed path or id)")
            rec = found
        content_hash, roots = _identity(index, rec.id)
    out = args.out if args.out is not None else "."
    if os.path.isdir(out):
        a, b = max(0.0, start - max(args.padding, 0.0)), min(rec.duration, end + max(args.padding, 0.0))
        out = os.path.join(out, clip_file_name(rec.path, a, b))
    elif os.path.splitext(out)[1].lower() not in CONTAINERS:
        raise CommandError(f"--out {out}: give a .mp4, .m4v, .mov or .mkv file, or an existing folder")
    if os.path.lexists(out) and not args.overwrite:
        raise CommandError(f"{show_path(out)} exists (choose another --out, or pass --overwrite to replace it)")
    with _open_source(rec.path, rec.size, rec.mtime, content_hash, roots) as src, _term_as_interrupt():
        res = cut_clip(src, start, end, out, copy=args.copy, padding=args.padding, duration=rec.duration,
                       overwrite=args.overwrite, name=rec.path)
    how = "copied from the key frame at" if res.copy else "re-encoded from"
    print(f"wrote {show_path(res.path)}: {res.duration:.2f} s ({res.frames} frames{', with audio' if res.audio else ''}), "
          f"{how} {res.start:.2f} s to {res.end:.2f} s of {show_path(rec.path)}")
    return 0


def _identity(index: SearchableIndex, video_id: int) -> tuple[str | None, tuple[list[str], str | None]]:
    """The indexed content hash of a video and the collection roots files are opened from (with
    the note when they were guessed), as the server has them (``milnce.index.roots``)."""
    return index.row(video_id).hash or None, index.serving_roots()


def _open_source(path: str, size: int, mtime: float, content_hash: str | None,
                 roots: tuple[list[str], str | None]) -> BinaryIO:
    """The indexed file opened by the server's rule (``milnce.index.opening``: inside the
    collection roots, no link followed out of them, still the indexed file), else
    ``SourceChangedError`` naming the path and saying why."""
    from ..index.opening import FileChangedError, OutsideRootsError, open_indexed_file
    from ..video.cut import SourceChangedError

    shown = show_path(path)
    try:
        fh, _ = open_indexed_file(path, size, mtime, content_hash, roots=roots[0])
        return fh
    except FileNotFoundError:
        raise SourceChangedError(f"{shown}: the indexed video is gone (moved or deleted; re-run milnce index)") from None
    except OutsideRootsError as exc:
        note = f" ({roots[1]})" if roots[1] else ""
        raise SourceChangedError(f"not opened: {show_path(str(exc))}{note}") from None
    except FileChangedError as exc:
        raise SourceChangedError(f"{show_path(str(exc))}; re-run milnce index") from None
    except OSError as exc:
        raise SourceChangedError(f"{shown} cannot be opened as the indexed file ({exc.strerror or exc}; "
                                 "re-run milnce index)") from None


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
