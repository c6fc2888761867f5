"""Opening an indexed file only while it is still the indexed one, and only inside the index's
collection roots: the one rule for the server (``milnce.server.files``) and ``milnce clip``.

A file is opened by walking from its root one component at a time without following any
symbolic link (``open_beneath``), and only while it is still the indexed file: its ``fstat`` must
show a regular file with the size and mtime recorded at indexing (``milnce.video.identity``). A
file that became a link is followed only when the link's target is inside the roots and its
content hash matches the indexed one (else ``FileChangedError``; outside the roots
``OutsideRootsError``).
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Sequence
from typing import Any, BinaryIO

from ..video import NOFOLLOW, OPEN_FLAGS, identity_problem
from .roots import inside_roots, relative_to_root

__all__ = ["FileChangedError", "OutsideRootsError", "open_beneath", "open_indexed_file", "file_state",
           "reach_state"]


class FileChangedError(Exception):
    """The path no longer holds the indexed file (answer 409)."""


def _hash_fd(fd: int, chunk: int = 1 << 20) -> str:
    """BLAKE2b-128 of an open file's content (the index's ``file_hash``, from a descriptor)."""
    h = hashlib.blake2b(digest_size=16)
    offset = 0
    while block := os.pread(fd, chunk, offset):
        h.update(block)
        offset += len(block)
    return h.hexdigest()


class OutsideRootsError(FileChangedError):
    """The file is not inside the index's collection roots, or reaching it would follow a link
    out of them (answer 403)."""


_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)


def open_beneath(path: str, roots: Sequence[str], flags: int) -> int:
    """Open ``path`` (absolute, normalised) by walking from the root that contains it, one
    component at a time with ``O_NOFOLLOW`` (``openat``): a symbolic link anywhere below the root,
    in a parent folder or the file itself, is refused (``OutsideRootsError``; ``ELOOP``/``ENOTDIR``
    from the kernel, so a folder swapped for a link after indexing cannot pass). The root itself
    is opened as named (the user chose it). ``FileNotFoundError`` when a component is gone."""
    for root in roots:
        rel = relative_to_root(path, root)
        if rel is None:
            continue
        base, parts = (os.path.dirname(root), [os.path.basename(root)]) if rel == "" else (root, rel.split(os.sep))
        dfd = os.open(base, _DIR_FLAGS)
        try:
            for comp in parts[:-1]:
                try:
                    nfd = os.open(comp, _DIR_FLAGS | NOFOLLOW, dir_fd=dfd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
                        raise OutsideRootsError(f"{_shown(path)}: a parent folder is now a symbolic link") from None
                    raise
                os.close(dfd)
                dfd = nfd
            try:
                return os.open(parts[-1], flags | NOFOLLOW, dir_fd=dfd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.EMLINK):
                    raise OutsideRootsError(f"{_shown(path)} is a symbolic link") from None
                raise
        finally:
            os.close(dfd)
    raise OutsideRootsError(f"{_shown(path)} is outside the index's collection roots")


def _shown(path: str) -> str:
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def open_indexed_file(path: str, size: int, mtime: float, content_hash: str | None = None,
                      hash_cache: dict[Any, bool] | None = None, *,
                      roots: Sequence[str] | None = None) -> tuple[BinaryIO, os.stat_result]:
    """Open ``path`` for reading only if it is still the file that was indexed.

    With ``roots`` (the server always gives them), the file is opened by walking from the root
    that contains it with ``O_NOFOLLOW`` on every component (``open_beneath``): a file outside
    the roots, or behind a link in any component, is refused with ``OutsideRootsError`` — except
    that a last component that is a link to a file *inside the roots* is followed when
    ``content_hash`` matches (the target is then opened the same way, from its root). Without
    ``roots`` only the last component is opened with ``O_NOFOLLOW``.

    ``O_NONBLOCK`` keeps a FIFO put in its place from hanging the server; ``fstat`` of the open
    descriptor must show a regular file whose size and mtime equal the recorded ``size`` and
    ``mtime``; a link is followed only when ``content_hash`` is known and the target's content
    hash equals it (the verdict is cached in ``hash_cache`` by device, inode, size and mtime).
    Raises ``FileNotFoundError`` (moved or deleted) or ``FileChangedError``.
    """
    lst = os.lstat(path)  # FileNotFoundError: gone
    link = stat.S_ISLNK(lst.st_mode)
    flags = OPEN_FLAGS
    try:
        if roots is None:
            fd = os.open(path, flags | (0 if link else NOFOLLOW))
        elif link:
            target = os.path.realpath(path)
            if not inside_roots(target, roots):
                raise FileChangedError(f"{_shown(path)} is now a symbolic link out of the collection roots")
            fd = open_beneath(target, roots, flags)
        else:
            fd = open_beneath(path, roots, flags)
    except (FileNotFoundError, FileChangedError):
        raise
    except OSError as exc:  # ELOOP: it became a link after the lstat
        raise FileChangedError(f"{_shown(path)} cannot be opened as the indexed file ({exc.strerror or exc})") from None
    try:
        st = os.fstat(fd)
        problem = identity_problem(st, size, mtime)  # the one check milnce clip uses too
        if problem is not None and not stat.S_ISREG(st.st_mode):
            raise FileChangedError(f"{_shown(path)} {problem}")
        if not link and (st.st_dev, st.st_ino) != (lst.st_dev, lst.st_ino):
            raise FileChangedError(f"{_shown(path)} was replaced while being opened")
        if problem is not None:
            raise FileChangedError(f"{_shown(path)}: {problem}")
        if link:
            if not content_hash:
                raise FileChangedError(f"{_shown(path)} is now a symbolic link")
            key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, content_hash)
            same = None if hash_cache is None else hash_cache.get(key)
            if same is None:
                same = _hash_fd(fd) == content_hash
                if hash_cache is not None:
                    hash_cache[key] = same
            if not same:
                raise FileChangedError(f"{_shown(path)} is now a symbolic link to another file")
        if flags & getattr(os, "O_NONBLOCK", 0) and hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb", buffering=0), st
    except BaseException:
        os.close(fd)
        raise


def file_state(path: str, size: int, mtime: float) -> str:
    """``"ok"``, ``"missing"`` or ``"changed"`` (not a regular file, or another size or mtime than
    indexed), from ``stat`` alone: a cheap hint for listings; serving checks more
    (``open_indexed_file``)."""
    try:
        st = os.stat(path)
    except OSError:
        return "missing"
    if not stat.S_ISREG(st.st_mode) or int(st.st_size) != int(size) or float(st.st_mtime) != float(mtime):
        return "changed"
    return "ok"


def reach_state(path: str, size: int, mtime: float, roots: Sequence[str] | None, content_hash: str | None = None,
                hash_cache: dict[Any, bool] | None = None) -> str:
    """What opening the indexed file by the serving rule (``open_indexed_file``) finds: ``"ok"``,
    ``"missing"`` (moved, deleted or unreadable), ``"outside"`` (outside the collection roots, or
    behind a folder that is now a link) or ``"changed"``."""
    try:
        fh, _ = open_indexed_file(path, size, mtime, content_hash, hash_cache, roots=roots)
    except OutsideRootsError:
        return "outside"
    except FileChangedError:
        return "changed"
    except OSError:
        return "missing"
    fh.close()
    return "ok"
