"""The source of a ``milnce clip`` cut: an indexed video found by its id or path, its identity as
the index has it, opened by the server's rule (``index/opening.py``: inside the collection roots,
no link followed out of them, still the indexed file), and where the clip goes."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO

from ..errors import MilnceError, UsageError
from ..printable import show_path

if TYPE_CHECKING:  # pragma: no cover
    from .records import VideoRecord

__all__ = ["NotIndexedError", "ClipSource", "find_video", "clip_source", "open_clip_source", "clip_output"]


class NotIndexedError(MilnceError, LookupError):
    """The video a clip names (by id or path) is not in the index."""


@dataclass(frozen=True)
class ClipSource:
    """An indexed video as a clip reads it: its record, indexed content hash (None: not recorded)
    and the collection roots it is opened from, with the note when they were guessed."""

    record: VideoRecord
    content_hash: str | None
    roots: list[str]
    roots_note: str | None


def find_video(index: Any, ref: int | str, index_dir: str | os.PathLike[str]) -> VideoRecord:
    """The indexed video ``ref`` names (an id, or a path); ``NotIndexedError`` when none."""
    if isinstance(ref, int):
        try:
            return index.video(ref)  # type: ignore[no-any-return]
        except KeyError as exc:
            raise NotIndexedError(str(exc.args[0])) from None
    found = index.video_by_path(ref)
    if found is None:
        raise NotIndexedError(f"{ref} is not in the index {os.fspath(index_dir)} (give an indexed path or id)")
    return found  # type: ignore[no-any-return]


def clip_source(index: Any, rec: VideoRecord) -> ClipSource:
    """What opening ``rec``'s file needs from the open index: the indexed content hash and the
    roots files are served from (``milnce.index.roots.serving_roots``), as the server has them."""
    from .roots import serving_roots

    roots, note = serving_roots(index.roots, (r.path for r in index.videos()))
    return ClipSource(rec, index.row(rec.id).hash or None, roots, note)


def open_clip_source(src: ClipSource) -> BinaryIO:
    """The indexed file opened by the server's rule, else ``SourceChangedError`` naming the path and
    saying why."""
    from ..video import SourceChangedError
    from .opening import FileChangedError, OutsideRootsError, open_indexed_file

    rec = src.record
    shown = show_path(rec.path)
    try:
        fh, _ = open_indexed_file(rec.path, rec.size, rec.mtime, src.content_hash, roots=src.roots)
        return fh
    except FileNotFoundError:
        raise SourceChangedError(f"{shown}: the indexed video is gone (moved or deleted; re-run milnce index)") from None
    except OutsideRootsError as exc:
        note = f" ({src.roots_note})" if src.roots_note else ""
        raise SourceChangedError(f"not opened: {show_path(str(exc))}{note}") from None
    except FileChangedError as exc:
        raise SourceChangedError(f"{show_path(str(exc))}; re-run milnce index") from None
    except OSError as exc:
        raise SourceChangedError(f"{shown} cannot be opened as the indexed file ({exc.strerror or exc}; "
                                 "re-run milnce index)") from None


def clip_output(out: str | None, rec: VideoRecord, start: float, end: float, *, padding: float = 0.0,
                overwrite: bool = False) -> str:
    """The clip's file: ``out`` itself (a .mp4, .m4v, .mov or .mkv name), or in the folder ``out``
    (default: the current one) a name saying the source and the padded span; ``UsageError`` for
    another name, or for an existing file unless ``overwrite``."""
    from ..video import CONTAINERS, clip_file_name

    path = out if out is not None else "."
    if os.path.isdir(path):
        a, b = max(0.0, start - max(padding, 0.0)), min(rec.duration, end + max(padding, 0.0))
        path = os.path.join(path, clip_file_name(rec.path, a, b))
    elif os.path.splitext(path)[1].lower() not in CONTAINERS:
        raise UsageError(f"--out {path}: give a .mp4, .m4v, .mov or .mkv file, or an existing folder")
    if os.path.lexists(path) and not overwrite:
        raise UsageError(f"{show_path(path)} exists (choose another --out, or pass --overwrite to replace it)")
    return path
