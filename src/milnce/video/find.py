"""One way to find videos: one list of video file extensions and one folder walker.

``walk_videos(folder)`` yields the video files below ``folder`` (known extensions, any case;
hidden files and folders skipped) in a stable order: a folder's files sorted by name, then its
subfolders in name order, depth first. The rule for links: a symbolic link (to a file or a
folder) is followed only when its target resolves inside the given roots; no folder is visited
twice (by device and inode), so link loops such as ``ln -s . L/a`` end; a folder that cannot be
read is reported (``on_error(path, reason)``, default: a warning on the ``milnce.video`` logger),
never skipped silently; names that are not UTF-8 are kept as they are (surrogate escapes).
``milnce index``, ``milnce extract`` and ``milnce eval`` (its match by id is a lookup over this
walker's output) all find videos with it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Collection, Iterator, Sequence

__all__ = ["VIDEO_SUFFIXES", "VIDEO_EXTENSIONS", "is_video_name", "walk_videos"]

log = logging.getLogger("milnce.video")

VIDEO_SUFFIXES = (  # most common first: the order in which a bare id is tried as a file name
    ".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp", ".ogv",
    ".gif", ".ts", ".mts", ".m2ts", ".vob", ".mxf", ".y4m", ".qt",
)
VIDEO_EXTENSIONS = frozenset(VIDEO_SUFFIXES)

OnError = Callable[[str, str], None]


def is_video_name(name: str) -> bool:
    """Whether ``name`` has a known video extension (any case)."""
    return os.path.splitext(name)[1].lower() in VIDEO_EXTENSIONS


def _printable(path: str) -> str:
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _inside(target: str, roots: Sequence[str]) -> bool:
    return any(target == r or target.startswith(r.rstrip(os.sep) + os.sep) for r in roots)


def walk_videos(folder: str | os.PathLike[str], *, roots: Sequence[str | os.PathLike[str]] | None = None,
                exclude: Collection[str] = (), recursive: bool = True,
                on_error: OnError | None = None) -> Iterator[str]:
    """The video files below ``folder`` (paths built from ``folder`` as given; see the module
    docstring for the order and the link rule). ``roots``: where links may lead (default:
    ``folder`` itself); ``exclude``: folders (as ``os.path.join`` builds them from ``folder``)
    to skip; ``recursive=False``: ``folder``'s own files only."""
    top = os.fspath(folder)
    real_roots = [os.path.realpath(os.fspath(r)) for r in (roots if roots is not None else [top])]
    report = on_error or (lambda p, why: log.warning("%s: %s", _printable(p), why))
    seen: set[tuple[int, int]] = set()
    stack = [top]
    while stack:
        d = stack.pop()
        try:
            st = os.stat(d)
        except OSError as exc:
            report(d, f"cannot read the folder: {exc.strerror or exc}")
            continue
        if (st.st_dev, st.st_ino) in seen:
            continue
        seen.add((st.st_dev, st.st_ino))
        files, dirs = _scan(d, real_roots, exclude, report)
        yield from files
        if recursive:
            stack.extend(reversed(dirs))


def _scan(d: str, roots: Sequence[str], exclude: Collection[str], report: OnError) -> tuple[list[str], list[str]]:
    """``(video files, subfolders)`` of ``d``, each sorted by name, links outside ``roots`` left out."""
    try:
        with os.scandir(d) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        report(d, f"cannot read the folder: {exc.strerror or exc}")
        return [], []
    files: list[str] = []
    dirs: list[str] = []
    for e in entries:
        if e.name.startswith("."):
            continue
        try:
            if e.is_symlink() and not _inside(os.path.realpath(e.path), roots):
                continue
            if e.is_dir():
                if e.path not in exclude:
                    dirs.append(e.path)
            elif is_video_name(e.name) and e.is_file():
                files.append(e.path)
        except OSError:  # vanished or unreadable entry: the open reports it later, if it is listed
            continue
    return files, dirs
