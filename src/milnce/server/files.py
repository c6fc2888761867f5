"""Serving the indexed files: ``Range`` parsing and a response that streams an opened file,
closing it when the body is sent, on error or when the client disconnects.

The identity-checked opening of an indexed file (``open_indexed_file``, ``open_beneath``,
``file_state``, ``reach_state``: inside the collection roots, no symbolic link followed, still the
indexed file) lives in ``milnce.index.opening`` (``milnce clip`` uses it too).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from typing import Any, BinaryIO

import anyio
from fastapi.responses import Response

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


def fd_path(fh: BinaryIO, fallback: str) -> str:
    """A path that reopens exactly this open file (``/proc/self/fd/N``), where the OS has one."""
    p = f"/proc/self/fd/{fh.fileno()}"
    return p if os.path.exists(p) else fallback
