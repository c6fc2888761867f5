"""Web UI and JSON API over an index: ``create_app(index, model)`` and ``serve(...)``.

Needs the optional extra ``serve`` (FastAPI + uvicorn): ``pip install 'milnce[serve]'``.

Endpoints (OpenAPI at ``/openapi.json``, interactive docs at ``/docs``):

- ``GET /``                                   the single-page UI (``milnce/static``)
- ``GET /healthz``                            liveness and index size
- ``GET /api/search?q=...&k=10``              moments for a query, best first (``by_video``, ``merge``)
- ``GET /api/videos``                         the indexed videos (paged)
- ``GET /api/videos/{id}``                    one video's metadata
- ``GET /api/videos/{id}/file``               the video file, with HTTP range requests (206)
- ``GET /api/videos/{id}/thumbnail?t=SEC``    JPEG of the frame at ``t`` seconds

``/static/api.html`` renders the OpenAPI document without internet access (``/docs`` loads
Swagger UI from a CDN). Files are addressed only by their id in the index, never by a path
from the request, so nothing outside the index can be read. Searches run in FastAPI's
threadpool, one model call at a time (a lock): torch uses the cores itself. Thumbnails are decoded with PyAV (seek, decode one
frame, scale to 192 px wide) and encoded with FFmpeg's ``mjpeg`` encoder (no PIL needed), then
kept in a small in-memory LRU cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import os
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from email.utils import formatdate
from fractions import Fraction
from importlib import resources
from typing import Any

MISSING_DEPS = "the web server needs FastAPI and uvicorn: pip install 'milnce[serve]'"

try:
    from fastapi import FastAPI, HTTPException, Query, Request
    from fastapi.encoders import jsonable_encoder
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response, StreamingResponse
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(MISSING_DEPS) from exc

__all__ = ["create_app", "serve", "listen", "parse_range", "MISSING_DEPS", "MAX_QUERY_CHARS", "MAX_K"]

MAX_QUERY_CHARS = 500
MAX_K = 100
THUMB_WIDTH = 192
THUMB_CACHE_ENTRIES = 512
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


class RangeNotSatisfiable(Exception):
    """The Range header asks only for bytes past the end of the file (answer 416)."""


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """One ``bytes=`` range -> ``(first, last)`` inclusive, clipped to the file.

    ``None`` means "send the whole file" (no header, another unit, a malformed or a multi-range
    header, all of which a server may ignore). Raises ``RangeNotSatisfiable`` for a range
    that starts past the end or an empty suffix.
    """
    if not header:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first_s, dash, last_s = spec.strip().partition("-")
    first_s, last_s = first_s.strip(), last_s.strip()
    if not dash or (first_s and not first_s.isdigit()) or (last_s and not last_s.isdigit()):
        return None
    if not first_s:  # suffix: the last N bytes
        if not last_s:
            return None
        n = int(last_s)
        if n == 0 or size == 0:
            raise RangeNotSatisfiable
        return max(0, size - n), size - 1
    first = int(first_s)
    if last_s and int(last_s) < first:
        return None
    if first >= size:
        raise RangeNotSatisfiable
    return first, min(int(last_s), size - 1) if last_s else size - 1


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
    """A thread-safe least-recently-used cache of small byte strings."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._data: OrderedDict[Any, bytes] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: Any) -> bytes | None:
        with self._lock:
            value = self._data.get(key)
            if value is None:
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: Any, value: bytes) -> None:
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


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"detail": message, **extra}, status_code=status)


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


def create_app(
    index: Any,
    model: Any,
    *,
    max_query_chars: int = MAX_QUERY_CHARS,
    max_k: int = MAX_K,
    thumbnail_width: int = THUMB_WIDTH,
    thumbnail_cache: int = THUMB_CACHE_ENTRIES,
    allowed_hosts: list[str] | None = None,
    refresh_interval: float = 5.0,
) -> FastAPI:
    """The FastAPI app serving ``index`` (a ``milnce.index.Index`` opened with ``model``).

    ``allowed_hosts``: if given, requests whose ``Host`` header names another host get 400
    (``serve`` sets it to the loopback names when bound to localhost, against DNS rebinding).
    ``refresh_interval``: at most this often (seconds), a search first picks up videos that a
    running ``milnce index`` committed meanwhile (``Index.refresh``); 0 turns that off.
    """
    from . import __version__

    app = FastAPI(
        title="milnce",
        version=__version__,
        description="Search the indexed videos with words (S3D text-video model, MIL-NCE). "
        "Videos are addressed by their id in the index.",
    )
    app.state.index = index
    app.state.model = model
    model_lock = threading.Lock()
    thumb_slots = threading.BoundedSemaphore(2)  # decoding is CPU-heavy: at most 2 at once
    thumbs = _LRU(thumbnail_cache)
    app.state.thumbnail_cache = thumbs
    static = _static_files()

    def count_videos() -> int | None:
        try:
            return len(index.videos())
        except Exception:  # noqa: BLE001 - healthz must not fail on a broken listing
            return None

    state: dict[str, Any] = {"videos": count_videos(), "refreshed": time.monotonic()}
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

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = jsonable_encoder(exc.errors(), custom_encoder={Exception: str})
        parts = []
        for e in errors:
            loc = [str(x) for x in e.get("loc", ())[1:]] or [str(x) for x in e.get("loc", ())]
            parts.append(f"{'.'.join(loc)}: {e.get('msg', 'invalid')}")
        return JSONResponse({"detail": errors, "message": "; ".join(parts)}, status_code=422)

    def record_or_404(video_id: int):  # type: ignore[no-untyped-def]
        try:
            return index.video(video_id)
        except (KeyError, IndexError):
            raise HTTPException(404, f"no video with id {video_id} in the index") from None

    def file_stat(rec) -> os.stat_result:  # type: ignore[no-untyped-def]
        """The file's stat, or 404 when it was moved or deleted since indexing."""
        try:
            st = os.stat(rec.path)
        except OSError:
            raise HTTPException(404, f"file missing: {rec.path} was moved or deleted since it was indexed") from None
        if not stat.S_ISREG(st.st_mode):
            raise HTTPException(404, f"file missing: {rec.path} is no longer a regular file")
        return st

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

    def moment_json(m) -> dict[str, Any]:  # type: ignore[no-untyped-def]
        d = dataclasses.asdict(m) if dataclasses.is_dataclass(m) and not isinstance(m, type) else dict(vars(m))
        d["score"] = round(float(d["score"]), 5)
        d.update(urls(m.video_id, m.path, (float(m.start) + float(m.end)) / 2))
        return d

    def video_json(rec) -> dict[str, Any]:  # type: ignore[no-untyped-def]
        d = dataclasses.asdict(rec) if dataclasses.is_dataclass(rec) and not isinstance(rec, type) else dict(vars(rec))
        d["exists"] = os.path.isfile(rec.path)
        d.update(urls(rec.id, rec.path, min(1.0, float(rec.duration or 0) / 2)))
        return d

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

    @app.get("/healthz", summary="Liveness and index size")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "version": __version__, "windows": len(index), "videos": state["videos"],
                "weights_id": getattr(model, "weights_id", None), "uptime_s": round(time.time() - started, 1)}

    @app.get("/api/search", summary="Search the moments of the indexed videos")
    def search(
        q: str = Query("", max_length=max_query_chars, description=f"the query, at most {max_query_chars} characters"),
        k: int = Query(10, ge=1, le=max_k, description=f"number of results, 1..{max_k}"),
        by_video: bool = Query(False, description="rank videos: at most one moment (its best) per video"),
        merge: bool = Query(True, description="join adjacent matching windows of a video into one moment"),
    ) -> dict[str, Any]:
        """Moments best matching `q`, best first. An empty query, or one without any word of
        the model's vocabulary, gives no results and a `message` saying why."""
        t0 = time.perf_counter()
        text = q.strip()
        tok = model.tokenizer
        words = tok.words(text) if text else []
        unknown = tok.unknown_words(text) if text else []
        message = None
        results: list[Any] = []
        if not text:
            message = "Empty query: type a few words describing what happens in the video."
        elif not words:
            message = ("None of the words are in the model's vocabulary, so there is nothing to search for"
                       + (f" (unknown: {', '.join(unknown[:10])})." if unknown else "."))
        else:
            with model_lock:
                maybe_refresh()
                results = index.search(text, k=k, merge=merge, by_video=by_video)
            if unknown:
                message = f"Ignored words not in the vocabulary: {', '.join(unknown[:10])}."
            if not results:
                message = (message + " " if message else "") + "No moments found: the index is empty."
        return {
            "query": q, "k": k, "by_video": by_video, "merge": merge, "words": words, "unknown_words": unknown,
            "results": [moment_json(m) for m in results], "message": message,
            "took_ms": round((time.perf_counter() - t0) * 1000, 2),
        }

    @app.get("/api/videos", summary="The indexed videos")
    def videos(offset: int = Query(0, ge=0), limit: int = Query(100, ge=1, le=1000)) -> dict[str, Any]:
        recs = index.videos()
        return {"total": len(recs), "offset": offset, "videos": [video_json(r) for r in recs[offset:offset + limit]]}

    @app.get("/api/videos/{video_id:int}", summary="One video's metadata",
             responses={404: {"description": "no such video"}})
    def video(video_id: int) -> dict[str, Any]:
        return video_json(record_or_404(video_id))

    @app.head("/api/videos/{video_id:int}/file", include_in_schema=False)
    @app.get("/api/videos/{video_id:int}/file", summary="The video file",
             responses={206: {"description": "partial content (Range)"},
                        404: {"description": "unknown id or file missing"},
                        416: {"description": "range not satisfiable"}})
    def video_file(video_id: int, request: Request) -> Response:
        """The file of a video; a single-range request (`Range: bytes=a-b`) is answered 206."""
        rec = record_or_404(video_id)
        st = file_stat(rec)
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
            return Response(status_code=416, headers={"Content-Range": f"bytes */{size}", "Accept-Ranges": "bytes"})
        status = 200
        first, last = 0, size - 1
        if span is not None:
            first, last = span
            status = 206
            headers["Content-Range"] = f"bytes {first}-{last}/{size}"
        length = last - first + 1 if size else 0
        headers["Content-Length"] = str(length)
        if request.method == "HEAD":
            return Response(status_code=status, headers=headers)
        try:
            fh = open(rec.path, "rb")  # noqa: SIM115 - closed by the generator
        except OSError:
            raise HTTPException(404, f"file missing: {rec.path} could not be opened") from None

        def body() -> Iterator[bytes]:
            try:
                fh.seek(first)
                left = length
                while left > 0:
                    chunk = fh.read(min(CHUNK, left))
                    if not chunk:
                        break
                    left -= len(chunk)
                    yield chunk
            finally:
                fh.close()

        return StreamingResponse(body(), status_code=status, headers=headers)

    @app.get("/api/videos/{video_id:int}/thumbnail", summary="JPEG of the frame at t seconds",
             responses={200: {"content": {"image/jpeg": {}}}, 404: {"description": "unknown id or file missing"}})
    def thumbnail(video_id: int, t: float = Query(0.0, ge=0, le=1e7, description="time in seconds")) -> Response:
        rec = record_or_404(video_id)
        st = file_stat(rec)
        duration = float(getattr(rec, "duration", 0) or 0)
        if duration > 0:
            t = min(t, max(0.0, duration - 0.05))
        t = round(t, 1)  # 0.1 s steps make the cache useful
        key = (video_id, t, st.st_size, st.st_mtime_ns, thumbnail_width)
        data = thumbs.get(key)
        if data is None:
            with thumb_slots:
                try:
                    data = grab_thumbnail(rec.path, t, thumbnail_width)
                except Exception as exc:  # noqa: BLE001 - any decoder failure is the file's fault
                    return _error(422, f"could not decode a frame of video {video_id} at {t}s: {exc}")
            thumbs.put(key, data)
        return Response(data, media_type="image/jpeg",
                        headers={"Cache-Control": "max-age=3600", "X-Content-Type-Options": "nosniff"})

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
    app = create_app(index, model, allowed_hosts=allowed)
    if sock is None:
        sock = listen(host, port)
    bound_port = sock.getsockname()[1]
    shown = f"[{host.strip('[]')}]" if ":" in host else host
    if announce:
        print(f"milnce: serving {len(index.videos())} videos ({len(index)} windows) at http://{shown}:{bound_port}/ "
              f"(API docs at /docs); Ctrl-C to stop", flush=True)
        if not loopback:
            print(f"milnce: warning: listening on {host}, not localhost: anyone who can reach this machine "
                  "can search the index and download the indexed videos", flush=True)
    config = uvicorn.Config(app, log_level=log_level, access_log=access_log, workers=1)
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
