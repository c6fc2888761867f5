"""Serving the indexed files: ``Range`` parsing, the identity-checked opening of an indexed file
(``open_indexed_file``, ``file_state``) and a response that streams the opened file, closing it
when the body is sent, on error or when the client disconnects.

A file is served only from inside the index's collection roots (``milnce.index.roots``), opened
by walking from its root one component at a time without following any symbolic link
(``open_beneath``), and only while it is still the indexed file: its ``fstat`` must show a
regular file with the size and mtime recorded at indexing. A file that became a link is followed
only when the link's target is inside the roots and its content hash matches the indexed one
(else ``FileChangedError``: 409 "file changed since indexing"; outside the roots 403).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import stat
from collections.abc import Callable, Sequence
from typing import Any, BinaryIO

import anyio
from fastapi.responses import Response

from ..index.roots import inside_roots, relative_to_root
from ..video.identity import NOFOLLOW, OPEN_FLAGS, identity_problem

CHUNK = 256 * 1024
log = logging.getLogger("milnce.server")

# Content types by extension; browsers play the first group, not AVI/MKV/FLV/WMV.
MIME_TYPES = {
    ".mp4": "video/mp4", ".m4v": "video/mp4", ".webm": "video/webm", ".ogv": "video/ogg",
    ".ogg": "video/ogg", ".mov": "video/quicktime", ".mkv": "video/x-matroska",
    ".avi": "video/x-msvideo", ".flv": "video/x-flv", ".wmv": "video/x-ms-wmv",
    ".mpg": "video/mpeg", ".mpeg": "video/mpeg", ".ts": "video/mp2t", ".3gp": "video/3gpp",
}
PLAYABLE = {".mp4", ".m4v", ".webm", ".ogv", ".ogg", ".mov"}

FILE_CHANGED = "file changed since indexing; re-run milnce index"
_DIGITS = re.compile(r"^[0-9]+$", re.ASCII)


class RangeNotSatisfiable(Exception):
    """The Range header asks only for bytes past the end of the file (answer 416)."""


def _number(digits: str) -> int:
    """An ASCII digit string as an int (capped at 10**18, so 5000-digit values cannot make
    ``int()`` refuse them)."""
    return int(digits) if len(digits) <= 18 else 10 ** 18


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """One ``bytes=`` range -> ``(first, last)`` inclusive, clipped to the file.

    ``None`` means "send the whole file" (no header, another unit, a malformed or a multi-range
    header, all of which a server may ignore, RFC 9110 14.2). Only ASCII digits count as
    digits (``str.isdigit`` and ``int`` would take ``²`` or Arabic-Indic digits). Raises
    ``RangeNotSatisfiable`` for a range that starts past the end or an empty suffix.
    """
    if not header:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first_s, dash, last_s = spec.strip().partition("-")
    first_s, last_s = first_s.strip(), last_s.strip()
    if not dash or (first_s and not _DIGITS.match(first_s)) or (last_s and not _DIGITS.match(last_s)):
        return None
    if not first_s:  # suffix: the last N bytes
        if not last_s:
            return None
        n = _number(last_s)
        if n == 0 or size == 0:
            raise RangeNotSatisfiable
        return max(0, size - n), size - 1
    first = _number(first_s)
    if last_s and _number(last_s) < first:
        return None
    if first >= size:
        raise RangeNotSatisfiable
    return first, min(_number(last_s), size - 1) if last_s else size - 1


# ----- file identity -------------------------------------------------------------------------


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
_NOFOLLOW = NOFOLLOW


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
                    nfd = os.open(comp, _DIR_FLAGS | _NOFOLLOW, dir_fd=dfd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
                        raise OutsideRootsError(f"{_shown(path)}: a parent folder is now a symbolic link") from None
                    raise
                os.close(dfd)
                dfd = nfd
            try:
                return os.open(parts[-1], flags | _NOFOLLOW, dir_fd=dfd)
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
            fd = os.open(path, flags | (0 if link else _NOFOLLOW))
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


class OpenFileResponse(Response):
    """Streams ``length`` bytes of an already opened (identity-checked) file from ``first``.

    The file is closed when the body is sent, when the client disconnects (the stream is
    cancelled) and on any error: aborted downloads do not keep descriptors until garbage
    collection (a ``StreamingResponse`` over a generator does)."""

    def __init__(self, fh: BinaryIO, first: int, length: int, status_code: int, headers: dict[str, str]) -> None:
        super().__init__(status_code=status_code, headers=headers)
        self.fh, self.first, self.length = fh, first, length

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        fd = self.fh.fileno()

        async def stream() -> None:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            offset, left = self.first, self.length
            while left > 0:
                chunk = await anyio.to_thread.run_sync(os.pread, fd, min(CHUNK, left), offset)
                if not chunk:
                    break
                offset += len(chunk)
                left -= len(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": left > 0})
            if left > 0 or self.length == 0:
                await send({"type": "http.response.body", "body": b"", "more_body": False})

        try:
            async with anyio.create_task_group() as tg:

                async def run_stream() -> None:
                    await stream()
                    tg.cancel_scope.cancel()

                async def watch() -> None:
                    while True:
                        if (await receive())["type"] == "http.disconnect":
                            tg.cancel_scope.cancel()
                            return

                tg.start_soon(run_stream)
                tg.start_soon(watch)
        except Exception as exc:  # noqa: BLE001
            if not _client_gone(exc):
                raise
        finally:
            self.fh.close()


class HeldFileResponse(OpenFileResponse):
    """Sends a whole open file (a clip whose folder is already removed: only the descriptor holds
    it) within ``timeout`` seconds, then closes it and calls ``on_close`` (sent, failed, client
    gone or too slow alike): a client that never reads cannot keep the file on disk."""

    def __init__(self, fh: BinaryIO, size: int, headers: dict[str, str], on_close: Callable[[], None],
                 timeout: float) -> None:
        super().__init__(fh, 0, size, 200, headers)
        self.on_close, self.timeout = on_close, timeout

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            with anyio.move_on_after(self.timeout) as scope_:
                await super().__call__(scope, receive, send)
            if scope_.cancelled_caught:
                log.warning("a clip was not read within %g s; dropped it", self.timeout)
        finally:
            self.fh.close()
            self.on_close()


def _client_gone(exc: BaseException) -> bool:
    """``exc`` is an ``OSError`` (some servers' ``send`` raises one when the client went away),
    or a group of them (anyio task groups wrap errors)."""
    if isinstance(exc, OSError):
        return True
    subs = getattr(exc, "exceptions", None) or ()
    return bool(subs) and all(_client_gone(e) for e in subs)


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


def fd_path(fh: BinaryIO, fallback: str) -> str:
    """A path that reopens exactly this open file (``/proc/self/fd/N``), where the OS has one."""
    p = f"/proc/self/fd/{fh.fileno()}"
    return p if os.path.exists(p) else fallback


_fd_path = fd_path  # older names
_OpenFileResponse = OpenFileResponse
