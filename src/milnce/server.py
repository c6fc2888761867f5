"""Web UI and JSON API over an index: ``create_app(index, model)`` and ``serve(...)``.

Needs the optional extra ``serve`` (FastAPI + uvicorn): ``pip install 'milnce[serve]'``.

Endpoints (OpenAPI at ``/openapi.json``, an offline reference at ``/static/api.html``):

- ``GET /``                                   the single-page UI (``milnce/static``)
- ``GET /healthz``                            liveness, index size, ANN state (``status``: ok / degraded)
- ``GET /api/config``                         defaults and limits (``default_k``, ``max_k``, ...), read by the UI
- ``GET /api/search?q=...&k=10``              moments for a query, best first (``by_video``, ``merge``)
- ``GET /api/search?like=ID@SECONDS``         moments like the window of video ``ID`` at that time
- ``GET /api/videos``                         the indexed videos (paged)
- ``GET /api/videos/{id}``                    one video's metadata
- ``GET /api/videos/{id}/curve?q=...``        the query's score over the video's windows (starts, ends, scores)
- ``GET /api/videos/{id}/file``               the video file, with HTTP range requests (206)
- ``GET /api/videos/{id}/thumbnail?t=SEC``    JPEG of the frame at ``t`` seconds

Every error answers ``{"error": {"status": <int>, "message": <str>}}`` (422 adds ``errors``, the
list of invalid parameters). ``/docs`` loads Swagger UI from a CDN (needs internet).

Files are addressed only by their id in the index, never by a path from the request, and a file
is served only while it is still the indexed file: opened without following a symbolic link in
its last component, its ``fstat`` must show a regular file with the size and mtime recorded at
indexing; a path that became a link is followed only when the target's content hash matches the
indexed one (else 409 "file changed since indexing"). Searches run in FastAPI's threadpool, one
model call at a time (a lock): torch uses the cores itself. A damaged approximate (ANN) index is
reported by ``/healthz`` and searches fall back to exact search. Thumbnails are decoded with PyAV
(seek, decode one frame, scale to 192 px wide) and encoded with FFmpeg's ``mjpeg`` encoder (no
PIL needed), then kept in a small in-memory LRU cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import logging
import os
import re
import stat
import threading
import time
import warnings
from collections import OrderedDict
from email.utils import formatdate
from fractions import Fraction
from importlib import resources
from typing import Any, BinaryIO

import numpy as np

MISSING_DEPS = "the web server needs FastAPI and uvicorn: pip install 'milnce[serve]'"

try:
    import anyio
    from fastapi import FastAPI, HTTPException, Query, Request
    from fastapi.encoders import jsonable_encoder
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(MISSING_DEPS) from exc

__all__ = ["create_app", "serve", "listen", "parse_range", "open_indexed_file", "file_state", "FileChangedError",
           "MISSING_DEPS", "MAX_QUERY_CHARS", "MAX_K", "DEFAULT_K"]

log = logging.getLogger("milnce.server")

DEFAULT_K = 10  # the one default number of results: API, UI (through /api/config) and CLI
MAX_QUERY_CHARS = 500
MAX_K = 100
THUMB_WIDTH = 192
THUMB_CACHE_ENTRIES = 512
QUERY_CACHE_ENTRIES = 64
CHUNK = 256 * 1024

# Content types by extension; browsers play the first group, not AVI/MKV/FLV/WMV.
MIME_TYPES = {
    ".mp4": "video/mp4", ".m4v": "video/mp4", ".webm": "video/webm", ".ogv": "video/ogg",
    ".ogg": "video/ogg", ".mov": "video/quicktime", ".mkv": "video/x-matroska",
    ".avi": "video/x-msvideo", ".flv": "video/x-flv", ".wmv": "video/x-ms-wmv",
    ".mpg": "video/mpeg", ".mpeg": "video/mpeg", ".ts": "video/mp2t", ".3gp": "video/3gpp",
}
PLAYABLE = {".mp4", ".m4v", ".webm", ".ogv", ".ogg", ".mov"}

STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".ico": "image/x-icon"}
# The UI loads nothing from other origins.
CSP = ("default-src 'self'; img-src 'self' data:; media-src 'self'; script-src 'self'; "
       "style-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")

FILE_CHANGED = "file changed since indexing; re-run milnce index"
_LIKE_RE = re.compile(r"^\s*([0-9]{1,12})\s*(?:@\s*([0-9]{1,9}(?:\.[0-9]{0,6})?)\s*)?$", re.ASCII)
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


def parse_like(value: str) -> tuple[int, float] | None:
    """``"ID"`` or ``"ID@SECONDS"`` (ASCII digits) -> ``(video_id, seconds)``; None if malformed."""
    m = _LIKE_RE.match(value or "")
    if not m:
        return None
    return int(m.group(1)), float(m.group(2) or 0.0)


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


def open_indexed_file(path: str, size: int, mtime: float, content_hash: str | None = None,
                      hash_cache: dict[Any, bool] | None = None) -> tuple[BinaryIO, os.stat_result]:
    """Open ``path`` for reading only if it is still the file that was indexed.

    The last path component is opened with ``O_NOFOLLOW`` (and ``O_NONBLOCK``, so a FIFO put in
    its place cannot hang the server); ``fstat`` of the open descriptor must show a regular file
    whose size and mtime equal the recorded ``size`` and ``mtime``. If the path is a symbolic
    link now, it is followed only when ``content_hash`` is known and the target's content hash
    equals it (the verdict is cached in ``hash_cache`` by device, inode, size and mtime).
    Raises ``FileNotFoundError`` (moved or deleted) or ``FileChangedError``.
    """
    lst = os.lstat(path)  # FileNotFoundError: gone
    link = stat.S_ISLNK(lst.st_mode)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    if not link:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise
    except OSError as exc:  # ELOOP: it became a link after the lstat
        raise FileChangedError(f"{path} cannot be opened as the indexed file ({exc.strerror or exc})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FileChangedError(f"{path} is no longer a regular file")
        if not link and (st.st_dev, st.st_ino) != (lst.st_dev, lst.st_ino):
            raise FileChangedError(f"{path} was replaced while being opened")
        if int(st.st_size) != int(size) or float(st.st_mtime) != float(mtime):
            raise FileChangedError(f"{path}: size or modification time differ from the indexed file's")
        if link:
            if not content_hash:
                raise FileChangedError(f"{path} is now a symbolic link")
            key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, content_hash)
            same = None if hash_cache is None else hash_cache.get(key)
            if same is None:
                same = _hash_fd(fd) == content_hash
                if hash_cache is not None:
                    hash_cache[key] = same
            if not same:
                raise FileChangedError(f"{path} is now a symbolic link to another file")
        if flags & getattr(os, "O_NONBLOCK", 0) and hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb", buffering=0), st
    except BaseException:
        os.close(fd)
        raise


class _OpenFileResponse(Response):
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


def _client_gone(exc: BaseException) -> bool:
    """``exc`` is an ``OSError`` (some servers' ``send`` raises one when the client went away),
    or a group of them (anyio task groups wrap errors)."""
    if isinstance(exc, OSError):
        return True
    subs = getattr(exc, "exceptions", None) or ()
    return bool(subs) and all(_client_gone(e) for e in subs)


# ----- small helpers -------------------------------------------------------------------------


def _static_files() -> dict[str, tuple[bytes, str, str]]:
    """name -> (content, content type, etag) for the files of ``milnce/static`` (flat)."""
    out: dict[str, tuple[bytes, str, str]] = {}
    root = resources.files("milnce") / "static"
    for entry in root.iterdir():
        ext = os.path.splitext(entry.name)[1].lower()
        if entry.is_file() and ext in STATIC_TYPES:
            data = entry.read_bytes()
            out[entry.name] = (data, STATIC_TYPES[ext], '"' + hashlib.sha1(data).hexdigest()[:16] + '"')
    return out


class _LRU:
    """A thread-safe least-recently-used cache."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._data: OrderedDict[Any, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: Any) -> Any:
        with self._lock:
            value = self._data.get(key)
            if value is None:
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: Any, value: Any) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


def grab_thumbnail(path: str, t: float, width: int = THUMB_WIDTH, quality: int = 4) -> bytes:
    """JPEG bytes of the frame shown at ``t`` seconds (the last frame if ``t`` is past the end).

    PyAV seeks to the key frame before ``t`` and decodes forward to the first frame at or after
    ``t``; the frame is scaled to ``width`` px (even height, aspect kept) and encoded by FFmpeg's
    ``mjpeg`` encoder at fixed quantiser ``quality`` (2 best .. 31 worst).
    """
    import av

    from .video import frame_at

    chosen = frame_at(path, t)  # VideoError if unreadable
    w = max(16, min(width, chosen.width)) // 2 * 2
    h = max(2, round(chosen.height * w / chosen.width / 2) * 2)
    small = chosen.reformat(width=w, height=h, format="yuvj420p")
    enc = av.CodecContext.create("mjpeg", "w")
    enc.width, enc.height, enc.pix_fmt = w, h, "yuvj420p"
    enc.time_base = Fraction(1, 25)
    enc.qscale = True
    enc.qmin = enc.qmax = quality
    packets = enc.encode(small) + enc.encode(None)
    return b"".join(bytes(p) for p in packets)


def _error(status: int, message: str, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    """The one error shape of the API: ``{"error": {"status": ..., "message": ..., **extra}}``."""
    return JSONResponse({"error": {"status": status, "message": message, **extra}}, status_code=status,
                        headers=headers)


def _recorded_hash(index: Any, rec: Any) -> str | None:
    """The content hash recorded for a video (``VideoRecord.hash`` if the index exposes it, else
    the stored row's), or None."""
    h = getattr(rec, "hash", None) or getattr(rec, "content_hash", None)
    if h:
        return str(h)
    row = getattr(index, "_records", {}).get(getattr(rec, "id", None))
    h = getattr(row, "hash", None)
    return str(h) if h else None


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


def _fd_path(fh: BinaryIO, fallback: str) -> str:
    """A path that reopens exactly this open file (``/proc/self/fd/N``), where the OS has one."""
    p = f"/proc/self/fd/{fh.fileno()}"
    return p if os.path.exists(p) else fallback


LOOPBACK_HOSTS = ["localhost", "127.0.0.1", "[::1]", "::1"]


class _HostCheck:
    """ASGI middleware: answer 400 to requests whose ``Host`` names another host (a page on
    another site that re-points its DNS name at 127.0.0.1 cannot read the API that way)."""

    def __init__(self, app: Any, allowed: list[str]) -> None:
        self.app = app
        self.allowed = {h.lower() for h in allowed}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1").lower()
            name = host if host.endswith("]") else host.rsplit(":", 1)[0]
            if name not in self.allowed and host not in self.allowed:
                response = _error(400, f"unexpected Host header {host!r}; this server answers only to "
                                  + ", ".join(sorted(self.allowed)))
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _warm_up(app: Any, word: str, k: int, host: str = "localhost") -> None:
    """One ``GET /api/search?q=word`` through the whole ASGI app, in-process: text encoding,
    search, scoring, routing, validation and JSON all run once before the first user's query."""
    from urllib.parse import urlencode

    query = urlencode({"q": word, "k": k}).encode()
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": "/api/search", "raw_path": b"/api/search", "query_string": query, "root_path": "",
             "headers": [(b"host", host.encode("latin-1"))], "client": ("127.0.0.1", 0), "server": ("127.0.0.1", 80)}
    sent: list[Any] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    anyio.run(app, scope, receive, send)
    status = next((m.get("status") for m in sent if m.get("type") == "http.response.start"), None)
    if status != 200:
        raise RuntimeError(f"warm-up search answered {status}")


def _first_known_word(model: Any) -> str:
    tok = getattr(model, "tokenizer", None)
    for w in ("video", "the", "a", "man", "cut"):
        if tok is None or tok.words(w):
            return w
    vocab = getattr(tok, "word_to_id", None) or {}
    return next(iter(vocab), "video")


def create_app(
    index: Any,
    model: Any,
    *,
    max_query_chars: int = MAX_QUERY_CHARS,
    max_k: int = MAX_K,
    default_k: int = DEFAULT_K,
    thumbnail_width: int = THUMB_WIDTH,
    thumbnail_cache: int = THUMB_CACHE_ENTRIES,
    allowed_hosts: list[str] | None = None,
    refresh_interval: float = 5.0,
    warm_up: bool = False,
) -> FastAPI:
    """The FastAPI app serving ``index`` (a ``milnce.index.Index`` opened with ``model``).

    ``allowed_hosts``: if given, requests whose ``Host`` header names another host get 400
    (``serve`` sets it to the loopback names when bound to localhost, against DNS rebinding).
    ``refresh_interval``: at most this often (seconds), a search first picks up videos that a
    running ``milnce index`` committed meanwhile (``Index.refresh``); 0 turns that off.
    ``warm_up``: run one search through the app before returning, so the first user's query
    does not pay the one-time costs (first text encoding, first scan, first request through
    FastAPI); its time is ``app.state.warmup_ms``.
    """
    from . import __version__
    from .errors import MilnceError

    app = FastAPI(
        title="milnce",
        version=__version__,
        description="Search the indexed videos with words (S3D text-video model, MIL-NCE). "
        "Videos are addressed by their id in the index. Errors answer "
        '{"error": {"status": <int>, "message": <str>}}.',
    )
    app.state.index = index
    app.state.model = model
    model_lock = threading.Lock()
    thumb_slots = threading.BoundedSemaphore(2)  # decoding is CPU-heavy: at most 2 at once
    thumbs = _LRU(thumbnail_cache)
    queries = _LRU(QUERY_CACHE_ENTRIES)  # text -> embedding (the curve after a search is free)
    hash_verdicts: dict[Any, bool] = {}
    app.state.thumbnail_cache = thumbs
    app.state.query_cache = queries
    static = _static_files()

    def count_videos() -> int | None:
        try:
            return len(index.videos())
        except Exception:  # noqa: BLE001 - healthz must not fail on a broken listing
            return None

    state: dict[str, Any] = {"videos": count_videos(), "refreshed": time.monotonic(), "ann_failed": None}
    started = time.time()

    def maybe_refresh() -> None:
        """Pick up commits of a concurrent ``milnce index`` (call with ``model_lock`` held)."""
        refresh = getattr(index, "refresh", None)
        if refresh is None or refresh_interval <= 0 or time.monotonic() - state["refreshed"] < refresh_interval:
            return
        state["refreshed"] = time.monotonic()
        if refresh():
            state["videos"] = count_videos()

    if allowed_hosts:
        app.add_middleware(_HostCheck, allowed=allowed_hosts)

    # ----- errors: one shape ---------------------------------------------------------------

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = jsonable_encoder(exc.errors(), custom_encoder={Exception: str})
        parts = []
        for e in errors:
            loc = [str(x) for x in e.get("loc", ())[1:]] or [str(x) for x in e.get("loc", ())]
            parts.append(f"{'.'.join(loc)}: {e.get('msg', 'invalid')}")
        return _error(422, "; ".join(parts), errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        return _error(500, f"internal server error ({type(exc).__name__}); the server log has the details")

    # ----- records and files ---------------------------------------------------------------

    def record_or_404(video_id: int):  # type: ignore[no-untyped-def]
        try:
            return index.video(video_id)
        except (KeyError, IndexError):
            raise HTTPException(404, f"no video with id {video_id} in the index") from None

    def open_checked(rec) -> tuple[BinaryIO, os.stat_result]:  # type: ignore[no-untyped-def]
        """The indexed file, opened, with its fstat: 404 when moved or deleted, 409 when the
        path now holds another file (``open_indexed_file``)."""
        try:
            return open_indexed_file(rec.path, rec.size, rec.mtime, _recorded_hash(index, rec), hash_verdicts)
        except FileNotFoundError:
            raise HTTPException(404, f"file missing: {rec.path} was moved or deleted since it was indexed") from None
        except FileChangedError as exc:
            raise HTTPException(409, f"{FILE_CHANGED} ({exc})") from None
        except OSError as exc:
            raise HTTPException(404, f"file missing: {rec.path} could not be opened ({exc.strerror or exc})") from None

    def urls(video_id: int, path: str, t: float | None = None) -> dict[str, Any]:
        ext = os.path.splitext(path)[1].lower()
        out = {
            "name": os.path.basename(path),
            "file_url": f"/api/videos/{video_id}/file",
            "mime": MIME_TYPES.get(ext, "application/octet-stream"),
            "playable": ext in PLAYABLE,
        }
        if t is not None:
            out["thumbnail_url"] = f"/api/videos/{video_id}/thumbnail?t={t:.2f}"
        return out

    def as_dict(obj: Any) -> dict[str, Any]:
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            return dataclasses.asdict(obj)
        return dict(vars(obj))

    def video_json(rec) -> dict[str, Any]:  # type: ignore[no-untyped-def]
        d = as_dict(rec)
        d.pop("hash", None)
        d["exists"] = os.path.isfile(rec.path)
        d["file_state"] = file_state(rec.path, rec.size, rec.mtime)
        d.update(urls(rec.id, rec.path, min(1.0, float(rec.duration or 0) / 2)))
        return d

    # ----- searching -----------------------------------------------------------------------

    def ann_key() -> Any:
        """The recorded ANN file's name (a rebuilt ANN index gets a new one), or None."""
        meta = getattr(index, "meta", None)
        info = meta.get("ann") if isinstance(meta, dict) else None
        return info.get("file") if isinstance(info, dict) else None

    def run_search(emb: np.ndarray, k: int, merge: bool, by_video: bool) -> tuple[list[Any], str | None]:
        """Search one embedding; a failing approximate index falls back to exact search."""
        exact = state["ann_failed"] is not None and state["ann_failed"][0] == ann_key()
        try:
            return index.search_embeddings(emb[None], k, merge=merge, by_video=by_video, exact=exact)[0], None
        except MilnceError:
            raise
        except Exception as exc:  # noqa: BLE001 - a damaged ANN file (faiss RuntimeError, ...)
            if exact:
                raise
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            log.warning("approximate search failed (%s); searching exactly", reason)
            found = index.search_embeddings(emb[None], k, merge=merge, by_video=by_video, exact=True)[0]
            state["ann_failed"] = (ann_key(), reason)
            return found, "The approximate index is damaged; searched exactly (rebuild it with 'milnce index --ann')."

    def text_embedding(text: str) -> np.ndarray:
        """The query's embedding (cached by text). Call with ``model_lock`` held."""
        emb = queries.get(text)
        if emb is None:
            got, problems = index.encode_queries([text])
            if problems[0] is not None:
                raise HTTPException(422, f"cannot search for {text!r}: {problems[0]}")
            emb = np.asarray(got[0], dtype=np.float32)
            queries.put(text, emb)
        return emb

    def like_source(like: str) -> tuple[int, float, np.ndarray, float, float]:
        """``ID@SECONDS`` -> (video id, time, the stored embedding of its window, window start, end).
        The window is the one whose start is nearest to the time."""
        parsed = parse_like(like)
        if parsed is None:
            raise HTTPException(422, f"like: expected VIDEO_ID or VIDEO_ID@SECONDS, got {like!r}")
        vid, t = parsed
        record_or_404(vid)
        starts, ends, vecs = index.windows(vid)
        if len(starts) == 0:
            raise HTTPException(422, f"like: video {vid} has no windows in the index")
        i = int(np.argmin(np.abs(np.asarray(starts, dtype=np.float64) - t)))
        return vid, t, np.asarray(vecs[i], dtype=np.float32), float(starts[i]), float(ends[i])

    def moments_json(results: list[Any], emb: np.ndarray) -> list[dict[str, Any]]:
        """Results as JSON, with a normalised score: the moment's ``cosine`` (and ``percentile``)
        if the index gives them, else the cosine of the query with the moment's best window."""
        qn = float(np.linalg.norm(emb)) or 1.0
        windows_of: dict[int, Any] = {}
        states: dict[int, str] = {}
        out = []
        for m in results:
            d = as_dict(m)
            if m.video_id not in states:
                try:
                    rec = index.video(m.video_id)
                    states[m.video_id] = file_state(rec.path, rec.size, rec.mtime)
                except (KeyError, IndexError):
                    states[m.video_id] = "missing"
            d["file_state"] = states[m.video_id]
            d["score"] = round(float(d["score"]), 5)
            if d.get("cosine") is None:
                if m.video_id not in windows_of:
                    windows_of[m.video_id] = index.windows(m.video_id)
                starts, ends, vecs = windows_of[m.video_id]
                inside = np.flatnonzero((np.asarray(starts) >= m.start - 1e-6) & (np.asarray(ends) <= m.end + 1e-6))
                if len(inside):
                    dots = np.asarray(vecs[inside], dtype=np.float32) @ emb
                    best = inside[int(np.argmax(dots))]
                    vn = float(np.linalg.norm(vecs[best])) or 1.0
                    d["cosine"] = float(m.score) / (qn * vn)
            if d.get("cosine") is not None:
                d["cosine"] = round(float(d["cosine"]), 4)
            if d.get("percentile") is not None:
                d["percentile"] = round(float(d["percentile"]), 2)
            d.update(urls(m.video_id, m.path, (float(m.start) + float(m.end)) / 2))
            out.append(d)
        return out

    def search_like(vid: int, t: float, vec: np.ndarray, w_start: float, w_end: float, k: int, merge: bool,
                    by_video: bool) -> tuple[list[Any], str | None]:
        """Moments like the window ``vec`` of video ``vid`` (``Index.search_like`` if the index has
        it), without the source moment itself."""
        native = getattr(index, "search_like", None)
        if native is not None:
            return list(native(vid, t, k=k, merge=merge, by_video=by_video)), None
        found, note = run_search(vec, k + 1, merge, by_video)
        centre = (w_start + w_end) / 2
        found = [m for m in found if not (m.video_id == vid and m.start <= centre <= m.end)]
        return found[:k], note

    def do_search(text: str, like: str, k: int, merge: bool, by_video: bool) -> dict[str, Any]:
        tok = model.tokenizer
        words = tok.words(text) if text else []
        unknown = tok.unknown_words(text) if text else []
        notes: list[str] = []
        results: list[Any] = []
        emb = None
        source = None
        if like:
            with model_lock:
                maybe_refresh()
                vid, t, emb, w0, w1 = like_source(like)
                results, note = search_like(vid, t, emb, w0, w1, k, merge, by_video)
            source = {"video_id": vid, "start": w0, "end": w1, **urls(vid, index.video(vid).path)}
            notes += [note] if note else []
        elif not text:
            notes.append("Empty query: type a few words describing what happens in the video.")
        elif not words:
            notes.append("None of the words are in the model's vocabulary, so there is nothing to search for"
                         + (f" (unknown: {', '.join(unknown[:10])})." if unknown else "."))
        else:
            with model_lock:
                maybe_refresh()
                emb = text_embedding(text)
                results, note = run_search(emb, k, merge, by_video)
            if unknown:
                notes.append(f"Ignored words not in the vocabulary: {', '.join(unknown[:10])}.")
            notes += [note] if note else []
            if not results and len(index) == 0:
                notes.append("No moments found: the index is empty.")
        return {"words": words, "unknown_words": unknown, "like": source,
                "results": moments_json(results, emb) if emb is not None else [],
                "message": " ".join(notes) or None}

    # ----- UI -----------------------------------------------------------------------------

    def static_response(name: str, request: Request) -> Response:
        data, ctype, etag = static[name]
        headers = {"ETag": etag, "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff",
                   "Content-Security-Policy": CSP, "Referrer-Policy": "no-referrer"}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        return Response(data, media_type=ctype, headers=headers)

    @app.get("/", include_in_schema=False)
    def ui(request: Request) -> Response:
        return static_response("index.html", request)

    @app.get("/static/{name}", include_in_schema=False)
    def static_file(name: str, request: Request) -> Response:
        if name not in static:  # a fixed list of names: no paths, no listing
            raise HTTPException(404, "Not Found")
        return static_response(name, request)

    # ----- API ----------------------------------------------------------------------------

    def ann_health() -> tuple[dict[str, Any], bool]:
        """(the ANN state, healthy?): ``Index.ann_status()`` if the index has it, else whether an
        ANN file is recorded, exists and loads."""
        native = getattr(index, "ann_status", None)
        if native is not None:
            info = dict(native())
            bad = info.get("ok") is False or str(info.get("state", info.get("status", ""))).lower() in (
                "damaged", "broken", "error", "missing", "unreadable")
        else:
            meta = getattr(index, "meta", None)
            rec = meta.get("ann") if isinstance(meta, dict) else None
            if not rec:
                info, bad = {"state": "none"}, False
            else:
                path = os.path.join(str(getattr(index, "directory", "")), str(rec.get("file", "")))
                info = {"file": rec.get("file"), "kind": rec.get("kind"), "rows": rec.get("rows")}
                if not os.path.isfile(path):
                    info["state"], bad = "missing", True
                else:
                    try:
                        loaded = index.ann()
                    except Exception as exc:  # noqa: BLE001 - a damaged file: report it
                        info.update(state="damaged", error=f"{type(exc).__name__}: {exc}".splitlines()[0][:300])
                        bad = True
                    else:  # None: stale (older than the index) or faiss not installed: exact search
                        info["state"], bad = ("ok" if loaded is not None else "unused"), False
        failed = state["ann_failed"]
        if failed is not None and failed[0] == ann_key():
            info["search_fallback"] = failed[1]
            bad = True
        return info, not bad

    @app.get("/healthz", summary="Liveness, index size and the approximate index's state")
    def healthz() -> dict[str, Any]:
        """`status` is "ok", or "degraded" (still HTTP 200) when the approximate index is damaged
        or missing: searches then run exactly; `ann` has the details."""
        ann, healthy = ann_health()
        return {"status": "ok" if healthy else "degraded", "version": __version__, "windows": len(index),
                "videos": state["videos"], "ann": ann, "weights_id": getattr(model, "weights_id", None),
                "uptime_s": round(time.time() - started, 1)}

    @app.get("/api/config", summary="Defaults and limits of the API (the UI reads them)")
    def config() -> dict[str, Any]:
        return {"default_k": default_k, "max_k": max_k, "max_query_chars": max_query_chars,
                "k_choices": sorted({default_k, *(c for c in (10, 20, 50, 100) if c <= max_k)}),
                "version": __version__}

    @app.get("/api/search", summary="Search the moments of the indexed videos (by words, or like a moment)",
             responses={404: {"description": "like: unknown video"}, 422: {"description": "invalid parameters"}})
    def search(
        q: str = Query("", max_length=max_query_chars, description=f"the query, at most {max_query_chars} characters"),
        like: str = Query("", max_length=40, description="instead of q: VIDEO_ID@SECONDS, moments like that window"),
        k: int = Query(default_k, ge=1, le=max_k, description=f"number of results, 1..{max_k}"),
        by_video: bool = Query(False, description="rank videos: at most one moment (its best) per video"),
        merge: bool = Query(True, description="join adjacent matching windows of a video into one moment"),
    ) -> dict[str, Any]:
        """Moments best matching `q` (or, with `like=ID@SECONDS`, the window of video ID at that
        time), best first; `score` is the raw dot product, `cosine` the normalised one. An empty
        query, or one without any word of the model's vocabulary, gives no results and a
        `message` saying why."""
        t0 = time.perf_counter()
        text, like_s = q.strip(), like.strip()
        if text and like_s:
            raise HTTPException(422, "give either q (words) or like (VIDEO_ID@SECONDS), not both")
        body = do_search(text, like_s, k, merge, by_video)
        return {"query": q, "k": k, "by_video": by_video, "merge": merge, **body,
                "took_ms": round((time.perf_counter() - t0) * 1000, 2)}

    @app.get("/api/videos", summary="The indexed videos")
    def videos(offset: int = Query(0, ge=0), limit: int = Query(100, ge=1, le=1000)) -> dict[str, Any]:
        recs = index.videos()
        return {"total": len(recs), "offset": offset, "videos": [video_json(r) for r in recs[offset:offset + limit]]}

    @app.get("/api/videos/{video_id:int}", summary="One video's metadata",
             responses={404: {"description": "no such video"}})
    def video(video_id: int) -> dict[str, Any]:
        return video_json(record_or_404(video_id))

    @app.get("/api/videos/{video_id:int}/curve", summary="A query's score over one video's windows",
             responses={404: {"description": "no such video"}, 422: {"description": "invalid parameters"}})
    def curve(
        video_id: int,
        q: str = Query("", max_length=max_query_chars, description="the query"),
        like: str = Query("", max_length=40, description="instead of q: VIDEO_ID@SECONDS"),
    ) -> dict[str, Any]:
        """`starts`, `ends` (seconds) and `scores` (dot products) of every window of the video,
        in time order, for `q` (or the window `like` names), and `cosine` (normalised scores)."""
        rec = record_or_404(video_id)
        text, like_s = q.strip(), like.strip()
        if bool(text) == bool(like_s):
            raise HTTPException(422, "give either q (words) or like (VIDEO_ID@SECONDS)")
        with model_lock:
            if like_s:
                emb = like_source(like_s)[2]
            else:
                problem = index.query_problem(text)
                if problem is not None:
                    return {"video_id": video_id, "query": q, "like": None, "starts": [], "ends": [], "scores": [],
                            "cosine": [], "duration": rec.duration, "message": f"nothing to score: {problem}"}
                emb = text_embedding(text)
        native = getattr(index, "curve", None)
        starts, ends, vecs = index.windows(video_id)
        vecs = np.asarray(vecs, dtype=np.float32)
        if native is not None and text:
            starts, ends, scores = native(video_id, text)
        else:
            scores = vecs @ emb
        scores = np.asarray(scores, dtype=np.float64)
        norms = np.linalg.norm(vecs, axis=1) * (float(np.linalg.norm(emb)) or 1.0)
        cosine = scores / np.where(norms > 0, norms, 1.0)
        return {"video_id": video_id, "query": q, "like": like_s or None, "duration": rec.duration,
                "starts": np.round(np.asarray(starts, dtype=np.float64), 3).tolist(),
                "ends": np.round(np.asarray(ends, dtype=np.float64), 3).tolist(),
                "scores": np.round(scores, 4).tolist(), "cosine": np.round(cosine, 4).tolist(), "message": None}

    @app.head("/api/videos/{video_id:int}/file", include_in_schema=False)
    @app.get("/api/videos/{video_id:int}/file", summary="The video file",
             responses={206: {"description": "partial content (Range)"},
                        404: {"description": "unknown id or file missing"},
                        409: {"description": "the file changed since indexing"},
                        416: {"description": "range not satisfiable"}})
    def video_file(video_id: int, request: Request) -> Response:
        """The file of a video, while it is still the indexed file (409 otherwise); a
        single-range request (`Range: bytes=a-b`) is answered 206."""
        rec = record_or_404(video_id)
        fh, st = open_checked(rec)
        try:
            size = st.st_size
            etag = f'"{st.st_mtime_ns:x}-{size:x}"'
            headers = {
                "Accept-Ranges": "bytes", "ETag": etag, "Last-Modified": formatdate(st.st_mtime, usegmt=True),
                "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff",
                "Content-Type": MIME_TYPES.get(os.path.splitext(rec.path)[1].lower(), "application/octet-stream"),
            }
            range_header = request.headers.get("range")
            if_range = request.headers.get("if-range")
            if if_range and if_range != etag and if_range != headers["Last-Modified"]:
                range_header = None  # the client's copy is stale: send the whole file
            try:
                span = parse_range(range_header, size)
            except RangeNotSatisfiable:
                fh.close()
                return _error(416, f"range not satisfiable: the file has {size} bytes",
                              headers={"Content-Range": f"bytes */{size}", "Accept-Ranges": "bytes"})
            status = 200
            first, last = 0, size - 1
            if span is not None:
                first, last = span
                status = 206
                headers["Content-Range"] = f"bytes {first}-{last}/{size}"
            length = last - first + 1 if size else 0
            headers["Content-Length"] = str(length)
            if request.method == "HEAD":
                fh.close()
                return Response(status_code=status, headers=headers)
            return _OpenFileResponse(fh, first, length, status, headers)
        except BaseException:
            fh.close()
            raise

    @app.get("/api/videos/{video_id:int}/thumbnail", summary="JPEG of the frame at t seconds",
             responses={200: {"content": {"image/jpeg": {}}}, 404: {"description": "unknown id or file missing"},
                        409: {"description": "the file changed since indexing"}})
    def thumbnail(video_id: int, t: float = Query(0.0, ge=0, le=1e7, description="time in seconds")) -> Response:
        rec = record_or_404(video_id)
        fh, st = open_checked(rec)
        with fh:
            duration = float(getattr(rec, "duration", 0) or 0)
            if duration > 0:
                t = min(t, max(0.0, duration - 0.05))
            t = round(t, 1)  # 0.1 s steps make the cache useful
            key = (video_id, t, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, thumbnail_width)
            data = thumbs.get(key)
            if data is None:
                with thumb_slots:
                    try:  # decode the checked open file, not whatever the path names by now
                        data = grab_thumbnail(_fd_path(fh, rec.path), t, thumbnail_width)
                    except Exception as exc:  # noqa: BLE001 - any decoder failure is the file's fault
                        reason = str(exc).replace(_fd_path(fh, rec.path), rec.path)
                        return _error(422, f"could not decode a frame of video {video_id} at {t}s: {reason}")
                thumbs.put(key, data)
        return Response(data, media_type="image/jpeg",
                        headers={"Cache-Control": "max-age=3600", "X-Content-Type-Options": "nosniff"})

    if warm_up:  # pay the one-time costs (first text encoding, first scan, first request) now
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                _warm_up(app, _first_known_word(model), default_k, (allowed_hosts or ["localhost"])[0])
            except Exception as exc:  # noqa: BLE001 - a warm-up failure must not stop the server
                log.warning("warm-up search failed: %s", exc)
        queries._data.clear()
        app.state.warmup_ms = round((time.perf_counter() - t0) * 1000, 1)

    return app


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def listen(host: str, port: int):  # type: ignore[no-untyped-def]
    """A listening socket on host:port (so a busy port is reported before anything starts)."""
    import socket

    infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, socktype, proto, _, addr = infos[0]
    sock = socket.socket(family, socktype, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def serve(
    index: Any,
    model: Any = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "info",
    access_log: bool = True,
    announce: bool = True,
    sock: Any = None,
) -> None:
    """Serve the UI and API until interrupted. ``index``: an ``Index`` or its folder (opened
    read-only with ``model``); ``model``: a loaded ``MILNCE`` (default: ``load_model()``);
    ``sock``: an already listening socket (from ``listen(host, port)``) to serve on."""
    try:
        import uvicorn
    except ImportError as exc:
        raise ImportError(MISSING_DEPS) from exc
    if model is None:
        from .api import load_model

        model = load_model()
    if isinstance(index, (str, os.PathLike)):
        from .index import Index

        index = Index.open(index, model, readonly=True)
    loopback = _is_loopback(host)
    allowed = LOOPBACK_HOSTS if loopback else None
    app = create_app(index, model, allowed_hosts=allowed, warm_up=True)
    if sock is None:
        sock = listen(host, port)
    bound_port = sock.getsockname()[1]
    shown = f"[{host.strip('[]')}]" if ":" in host else host
    if announce:
        print(f"milnce: serving {len(index.videos())} videos ({len(index)} windows) at http://{shown}:{bound_port}/ "
              f"(API reference at /static/api.html); Ctrl-C to stop", flush=True)
        if not loopback:
            print(f"milnce: warning: listening on {host}, not localhost: anyone who can reach this machine "
                  "can search the index and download the indexed videos", flush=True)
    config = uvicorn.Config(app, log_level=log_level, access_log=access_log, workers=1)
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
