"""The FastAPI app over an index: ``create_app(index, model)``, its routes, the ``Host`` check,
errors in one shape and the warm-up search (the endpoints are listed in ``milnce.server``).

Searches run in FastAPI's threadpool, one model call at a time (a lock): torch uses the cores
itself. A damaged approximate (ANN) index is reported by ``/healthz`` and searches fall back to
exact search. Thumbnails are kept in a small in-memory LRU cache.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Mapping
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import MilnceError
from ..index import IndexDamagedError, SearchableIndex
from ..protocols import Encoder
from ..video import ClipLimits
from .multi import IndexSet
from .routes import CSP, STATIC_TYPES, Limits, api_router, error_response, media_router, ui_router
from .service import QUERY_CACHE_ENTRIES, ApiError, parse_like
from .thumbs import LRU, THUMB_CACHE_ENTRIES, THUMB_WIDTH
from .upload import UploadLimits, upload_router

log = logging.getLogger("milnce.server")

DEFAULT_K = 10  # the one default number of results: API, UI (through /api/config) and CLI
MAX_QUERY_CHARS = 500
MAX_K = 100

__all__ = ["create_app", "parse_like", "DEFAULT_K", "MAX_QUERY_CHARS", "MAX_K", "QUERY_CACHE_ENTRIES", "CSP",
           "STATIC_TYPES"]


def _error(status: int, message: str, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    return error_response(status, message, headers, **extra)


def host_name(host: str) -> str:
    """The host name of a ``Host`` header value (``name``, ``name:port``, ``[v6]`` or ``[v6]:port``),
    lower-cased; anything else (``127.0.0.1:8770@evil.com``, a path, a bad port) gives ``""``,
    which no allowed list contains."""
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        if end < 0:
            return ""
        name, rest = host[:end + 1], host[end + 1:]
    else:
        name, sep, port = host.partition(":")
        rest = sep + port
    if rest and not (rest.startswith(":") and 0 < len(rest) - 1 <= 5 and rest[1:].isascii() and rest[1:].isdigit()
                     and 0 < int(rest[1:]) <= 65535):
        return ""
    inner = name[1:-1] if name.startswith("[") else name
    if not inner or any(not (c.isascii() and (c.isalnum() or c in ".-:")) for c in inner):
        return ""
    if ":" in inner and not name.startswith("["):
        return ""
    return name


class _HostCheck:
    """ASGI middleware: answer 400 to requests whose ``Host`` names another host (a page on
    another site that re-points its DNS name at 127.0.0.1 cannot read the API that way)."""

    def __init__(self, app: Any, allowed: list[str]) -> None:
        self.app = app
        self.allowed = {h.lower() for h in allowed}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            hosts = [v for k, v in scope["headers"] if k.lower() == b"host"]
            host = hosts[0].decode("latin-1").lower() if hosts else ""
            name = host_name(host) if len(hosts) == 1 else ""
            if name not in self.allowed:
                what = (f"{len(hosts)} Host headers" if len(hosts) > 1
                        else f"unexpected Host header {_echo(host)!r}")
                response = _error(400, f"{what}; this server answers only to " + ", ".join(sorted(self.allowed)))
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


def _first_known_word(model: Encoder) -> str:
    tok = model.tokenizer
    for w in ("video", "the", "a", "man", "cut"):
        if tok.words(w):
            return w
    vocab = getattr(tok, "word_to_id", None) or {}
    return next(iter(vocab), "video")


def create_app(
    index: SearchableIndex | Mapping[str, SearchableIndex],
    model: Encoder,
    *,
    max_query_chars: int = MAX_QUERY_CHARS,
    max_k: int = MAX_K,
    default_k: int = DEFAULT_K,
    thumbnail_width: int = THUMB_WIDTH,
    thumbnail_cache: int = THUMB_CACHE_ENTRIES,
    allowed_hosts: list[str] | None = None,
    refresh_interval: float = 5.0,
    warm_up: bool = False,
    clip_limits: ClipLimits | None = None,
    upload_limits: UploadLimits | None = None,
) -> FastAPI:
    """The FastAPI app serving ``index`` (a ``milnce.index.IndexReader`` opened with ``model``, or
    any ``milnce.index.SearchableIndex``), or several: ``{name: index}`` (``milnce.server.multi``:
    same weights and window settings required, ``IndexMismatchError`` otherwise).

    ``allowed_hosts``: if given, requests whose ``Host`` header names another host get 400
    (``serve`` sets it to the loopback names when bound to localhost, against DNS rebinding).
    ``refresh_interval``: at most this often (seconds), a search first picks up videos that a
    running ``milnce index`` committed meanwhile (``IndexReader.refresh``); 0 turns that off.
    ``warm_up``: run one search through the app before returning, so the first user's query
    does not pay the one-time costs (first text encoding, first scan, first request through
    FastAPI); its time is ``app.state.warmup_ms``. ``clip_limits``: the clip endpoint's length cap
    and concurrent cuts (default 300 s, 2). ``upload_limits``: ``POST /api/search/like-upload``'s
    caps (``milnce.server.upload.UploadLimits``: 50 MiB, 60 s of clip, 120 s to embed).
    """
    from .. import __version__

    app = FastAPI(
        title="milnce",
        version=__version__,
        description="Search the indexed videos with words (S3D text-video model, MIL-NCE). "
        "Videos are addressed by their id in the index. Errors answer "
        '{"error": {"status": <int>, "message": <str>}}.',
    )
    indexes = IndexSet(index if isinstance(index, Mapping) else
                       {os.path.basename(os.path.normpath(index.directory)) or "index": index},
                       model, refresh_interval=refresh_interval)
    service = indexes.first
    thumbs = LRU(thumbnail_cache)
    app.state.indexes = indexes
    app.state.index = service.index
    app.state.model = model
    app.state.service = service
    app.state.thumbnail_cache = thumbs
    app.state.query_cache = service.queries
    if allowed_hosts:
        app.add_middleware(_HostCheck, allowed=allowed_hosts)
    _add_error_handlers(app)
    app.include_router(ui_router())
    clips = clip_limits or ClipLimits()
    uploads = upload_limits or UploadLimits()
    limits = Limits(default_k, max_k, max_query_chars, max_clip_seconds=clips.max_seconds,
                    upload_max_mb=uploads.max_bytes / 2**20, upload_max_seconds=uploads.max_seconds)
    app.include_router(api_router(limits, __version__, time.time()))
    app.include_router(upload_router(uploads, max_k, default_k, limits.max_offset))
    app.include_router(media_router(thumbnail_width, thumbs, clips))
    if warm_up:  # pay the one-time costs (first text encoding, first scan, first request) now
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                _warm_up(app, _first_known_word(model), default_k, (allowed_hosts or ["localhost"])[0])
            except Exception as exc:  # noqa: BLE001 - a warm-up failure must not stop the server
                log.warning("warm-up search failed: %s", exc)
        service.queries._data.clear()
        app.state.warmup_ms = round((time.perf_counter() - t0) * 1000, 1)
    return app


ECHO_CHARS = 200  # an error body quotes at most this much of what the client sent


def _echo(text: str, limit: int = ECHO_CHARS) -> str:
    """``text`` cut to ``limit`` characters (saying how long it was): error bodies never echo a
    100 KB parameter back."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _short_input(error: Any) -> Any:
    """A validation error with its echoed ``input`` (and message) cut to ``ECHO_CHARS``."""
    if not isinstance(error, dict):
        return error
    out = dict(error)
    for key in ("input", "msg"):
        if isinstance(out.get(key), str):
            out[key] = _echo(out[key])
        elif key == "input" and out.get(key) is not None and len(repr(out[key])) > ECHO_CHARS:
            out[key] = _echo(repr(out[key]))
    if isinstance(out.get("ctx"), dict):
        out["ctx"] = {k: _echo(v) if isinstance(v, str) else v for k, v in out["ctx"].items()}
    return out


def _add_error_handlers(app: FastAPI) -> None:
    """Every error in one shape (``error_response``)."""

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [_short_input(e) for e in jsonable_encoder(exc.errors(), custom_encoder={Exception: str})]
        parts = []
        for e in errors:
            loc = [str(x) for x in e.get("loc", ())[1:]] or [str(x) for x in e.get("loc", ())]
            parts.append(f"{'.'.join(loc)}: {e.get('msg', 'invalid')}")
        return _error(422, "; ".join(parts), errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(ApiError)
    async def _api(request: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.message, headers=exc.headers)

    @app.exception_handler(IndexDamagedError)
    async def _damaged(request: Request, exc: IndexDamagedError) -> JSONResponse:
        log.error("%s %s: %s", request.method, request.url.path, exc)
        return _error(503, str(exc))

    @app.exception_handler(MilnceError)
    async def _milnce(request: Request, exc: MilnceError) -> JSONResponse:
        return _error(422, str(exc))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        return _error(500, f"internal server error ({type(exc).__name__}); the server log has the details")
