"""The HTTP routes, as FastAPI routers over a ``SearchService`` (``milnce.server.service``): the
JSON API (``api_router``), the video files and thumbnails (``media_router``) and the UI's static
files (``ui_router``). Each route parses its parameters, calls the service and returns; the
service is found with ``service_for(request)`` (today the app's one service; several indexes
behind one server would pick one by a path or query parameter there)."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from email.utils import formatdate
from importlib import resources
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response

from ..index import DEFAULT_NOT_WEIGHT, DEFAULT_SPEECH_WEIGHT, FilterError, VideoFilter, parse_when
from ..video import ClipBusyError, ClipError, ClipLimits, check_span, clip_file_name, cut_clip
from .files import MIME_TYPES, HeldFileResponse, OpenFileResponse, RangeNotSatisfiable, fd_path, parse_range
from .multi import IndexSet
from .schemas import SEARCH_RESPONSE
from .service import ApiError, SearchService
from .thumbs import LRU, grab_thumbnail

__all__ = ["Limits", "api_router", "media_router", "ui_router", "service_for", "error_response", "CSP",
           "STATIC_TYPES"]

STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".ico": "image/x-icon"}
# The UI loads nothing from other origins.
CSP = ("default-src 'self'; img-src 'self' data:; media-src 'self'; script-src 'self'; "
       "style-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")


@dataclass(frozen=True)
class Limits:
    """The API's defaults and limits (``/api/config`` gives them to the UI)."""

    default_k: int
    max_k: int
    max_query_chars: int
    max_offset: int = 10_000
    max_clip_seconds: float = 300.0
    upload_max_mb: float = 50.0  # POST /api/search/like-upload (``milnce.server.upload.UploadLimits``)
    upload_max_seconds: float = 60.0


def error_response(status: int, message: str, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    """The one error shape of the API: ``{"error": {"status": ..., "message": ..., **extra}}``."""
    return JSONResponse({"error": {"status": status, "message": message, **extra}}, status_code=status,
                        headers=headers)


def service_for(request: Request) -> SearchService:
    """The service a request addresses: ``index=NAME`` among several indexes, else the only one
    (``milnce.server.multi.IndexSet.get``)."""
    sets: IndexSet = request.app.state.indexes
    return sets.get(request.query_params.get("index") or None)


def video_filter(under: str, path_glob: str, after: str, before: str, min_duration: float | None,
                 max_duration: float | None) -> VideoFilter | None:
    """The ``VideoFilter`` of the search parameters (None when all are empty); 422 for a bad one."""
    try:
        filt = VideoFilter(under=under.strip() or None, path_glob=path_glob.strip() or None,
                           mtime_min=parse_when(after) if after.strip() else None,
                           mtime_max=parse_when(before) if before.strip() else None,
                           duration_min=min_duration, duration_max=max_duration)
    except FilterError as exc:
        raise ApiError(422, str(exc)) from None
    return None if filt.is_empty else filt


def _store_ok(service: SearchService) -> None:
    """503 in the error shape when the vector store was truncated under the server."""
    problem = service.check_store()
    if problem is not None:
        raise ApiError(503, problem)


def _config(limits: Limits, version: str) -> dict[str, Any]:
    """The ``/api/config`` body: the API's defaults and limits, and the k choices of the UI."""
    return {"default_k": limits.default_k, "max_k": limits.max_k, "max_query_chars": limits.max_query_chars,
            "max_offset": limits.max_offset, "max_clip_seconds": limits.max_clip_seconds,
            "upload_max_mb": limits.upload_max_mb, "upload_max_seconds": limits.upload_max_seconds,
            "k_choices": sorted({limits.default_k, *(c for c in (10, 20, 50, 100) if c <= limits.max_k)}),
            "version": version}


def _health(sets: IndexSet, name: str | None, version: str, started: float) -> dict[str, Any]:
    """The ``/healthz`` body over the index ``name`` (None: all of them, or the only one)."""
    services = [sets.get(name)] if name or not sets.several else list(sets.services.values())
    s = services[0]
    ann, healthy = s.ann_health()
    stores = [p for x in services if (p := x.check_store()) is not None]
    healthy = healthy and all(x.ann_health()[1] for x in services[1:])
    counts = [x.videos_count for x in services]
    out = {"status": "ok" if healthy and not stores else "degraded", "version": version,
           "windows": sum(len(x.index) for x in services),
           "videos": None if None in counts else sum(c for c in counts if c is not None), "ann": ann,
           "weights_id": s.model.weights_id, "model": _model_name(s.model), "indexes": len(services),
           "uptime_s": round(time.time() - started, 1)}
    if stores:
        out["store"] = "; ".join(stores)
    return out


def _model_name(model: object) -> str:
    """Which model answers, for the page: the registry name, or what a run folder says it is."""
    info = getattr(model, "info", None)
    name = str(getattr(info, "name", "") or "unknown")
    description = str(getattr(info, "description", "") or "")
    return f"{name} ({description})" if name.startswith("run:") and description else name


def _search_terms(q: str, like: str, not_: list[str] | None, max_chars: int) -> tuple[str, str, list[str]]:
    """(text, like, negative terms) of the search parameters; 422 for q and like together or too
    many / too long negative terms."""
    text, like_s = q.strip(), like.strip()
    if text and like_s:
        raise ApiError(422, "give either q (words) or like (VIDEO_ID@SECONDS), not both")
    not_ = not_ or []
    if len(not_) > 8 or any(len(n) > max_chars for n in not_):
        raise ApiError(422, f"at most 8 negative terms of at most {max_chars} characters")
    return text, like_s, [n.strip() for n in not_ if n.strip()]


def _run_search(sets: IndexSet, text: str, like_s: str, index: str, k: int, merge: bool, by_video: bool,
                opts: dict[str, Any]) -> dict[str, Any]:
    """Search all indexes merged (several, no ``index``) or the one ``index`` / ``like`` names."""
    if sets.several and not index:
        for x in sets.services.values():
            _store_ok(x)
        return sets.search_all(text, like_s, k, merge, by_video, **opts)
    s, like_s = sets.split_like(like_s, index or None) if like_s else (sets.get(index or None), "")
    _store_ok(s)
    return s.search(text, like_s, k, merge, by_video, **opts)


def _curve(sets: IndexSet, s: SearchService, video_id: int, q: str, like: str) -> dict[str, Any]:
    """The ``/api/videos/{id}/curve`` body: ``q``'s (or the ``like`` window's) scores over video
    ``video_id`` of ``s``; ``like`` may name a window of another index."""
    _store_ok(s)
    like_s, like_emb = like.strip(), None
    if ":" in like_s:  # a window of another index (a merged "more like this")
        src, rest = sets.split_like(like_s, None)
        like_s, like_emb = rest, src.like_source(rest)[1]
    out = s.curve(video_id, q.strip(), like_s, like_emb)
    out["query"] = q
    return out


def api_router(limits: Limits, version: str, started: float) -> APIRouter:
    """``/healthz``, ``/api/indexes``, ``/api/config``, ``/api/search``, ``/api/videos[/{id}[/curve]]``."""
    r = APIRouter()
    _status_routes(r, limits, version, started)
    _search_route(r, limits)
    _video_routes(r, limits)
    return r


def _status_routes(r: APIRouter, limits: Limits, version: str, started: float) -> None:
    """``/healthz``, ``/api/indexes``, ``/api/config``: the server's state and the API's limits."""

    @r.get("/healthz", summary="Liveness, index size and the approximate index's state")
    def healthz(request: Request) -> dict[str, Any]:
        """`status` is "ok", or "degraded" (still HTTP 200) when the approximate index is damaged
        or missing (searches then run exactly) or the vector store is damaged; `ann` has the details."""
        return _health(request.app.state.indexes, request.query_params.get("index") or None, version, started)

    @r.get("/api/indexes", summary="The indexes this server serves")
    def indexes(request: Request) -> dict[str, Any]:
        """`name` (what `index=` takes), folder, videos, windows, weights fingerprint, window
        settings and ANN state of each, in the order given to `milnce serve`."""
        sets: IndexSet = request.app.state.indexes
        return {"indexes": sets.listing(), "several": sets.several}

    @r.get("/api/config", summary="Defaults and limits of the API (the UI reads them)")
    def config() -> dict[str, Any]:
        return _config(limits, version)


def _search_route(r: APIRouter, limits: Limits) -> None:
    """``/api/search``: moments by words or like a moment, filtered, with negative terms."""
    mq = limits.max_query_chars

    @r.get("/api/search", summary="Search the moments of the indexed videos (by words, or like a moment)",
           responses={**SEARCH_RESPONSE, 404: {"description": "like: unknown video"},
                      422: {"description": "invalid parameters"}, 503: {"description": "the vector store is damaged"}})
    def search(
        request: Request,
        q: str = Query("", max_length=mq, description=f"the query, at most {mq} characters"),
        like: str = Query("", max_length=300, description="instead of q: [INDEX:]VIDEO_ID@SECONDS, moments like "
                          "that window"),
        index: str = Query("", max_length=200, description="search this index only (default: all, merged)"),
        k: int = Query(limits.default_k, ge=1, le=limits.max_k, description=f"number of results, 1..{limits.max_k}"),
        by_video: bool = Query(False, description="rank videos: at most one moment (its best) per video"),
        merge: bool = Query(True, description="join adjacent matching windows of a video into one moment"),
        offset: int = Query(0, ge=0, le=limits.max_offset,
                            description="skip the first results: pages of one fixed ranking"),
        not_: list[str] | None = Query(None, alias="not",  # noqa: B008 - a repeatable parameter
                                       description="a sentence the moments should not match (repeatable; also -term in q)"),
        not_weight: float = Query(DEFAULT_NOT_WEIGHT, ge=0, le=1e6,
                                  description="score = positive - not_weight x the best negative score"),
        mode: Literal["visual", "speech", "hybrid"] | None = Query(
            None, description="what is scored: the pictures (visual), the subtitle cues (speech) or both (hybrid); "
            "default hybrid where the index has transcripts, else visual. The response's `mode` says which ran"),
        speech_weight: float | None = Query(
            None, ge=0, le=100, description=f"hybrid: score = visual + speech_weight x speech_score x the query's "
            f"visual scale (a full speech match adds speech_weight in cosine units; default {DEFAULT_SPEECH_WEIGHT})"),
        under: str = Query("", max_length=4096, description="only videos inside this folder"),
        path_glob: str = Query("", max_length=1000, description="only paths matching this glob (relative)"),
        after: str = Query("", max_length=40, description="modified at or after (YYYY-MM-DD[THH:MM] or epoch s)"),
        before: str = Query("", max_length=40, description="modified before"),
        min_duration: float | None = Query(None, ge=0, le=1e9, description="videos at least this long (s)"),
        max_duration: float | None = Query(None, ge=0, le=1e9, description="videos at most this long (s)"),
    ) -> dict[str, Any]:
        """Moments best matching `q` (or, with `like=ID@SECONDS`, the window of video ID at that
        time), best first; `score` is the raw dot product, `cosine` the normalised one. `-word`
        or `-"two words"` in `q` (and each `not`) is a negative term: a window's score becomes
        the positive score minus `not_weight` times its best negative score. The filters apply
        before the top `k` is taken. An empty query, or one without any word of the model's
        vocabulary, gives no results and a `message` saying why. With transcripts (`mode` hybrid
        or speech) each moment also carries `visual_score`, `speech_score` (0..1) and `cues`: the
        matched subtitle cues overlapping it (`start`, `end`, `text`, `lang`, `matches`: `[i, j]`
        character spans of the matched words in `text`, for highlighting; `text` is plain text,
        never HTML). `score` is then the fused score."""
        t0 = time.perf_counter()
        text, like_s, negatives = _search_terms(q, like, not_, mq)
        filt = video_filter(under, path_glob, after, before, min_duration, max_duration)
        opts: dict[str, Any] = {"offset": offset, "video_filter": filt, "not_weight": not_weight,
                                "negatives": negatives, "mode": mode, "speech_weight": speech_weight}
        body = _run_search(request.app.state.indexes, text, like_s, index, k, merge, by_video, opts)
        return {"query": q, "k": k, "by_video": by_video, "merge": merge, **body,
                "took_ms": round((time.perf_counter() - t0) * 1000, 2)}


def _video_routes(r: APIRouter, limits: Limits) -> None:
    """``/api/videos[/{id}[/curve]]``: the indexed videos, one video's metadata, a query's curve."""
    mq = limits.max_query_chars

    @r.get("/api/videos", summary="The indexed videos")
    def videos(request: Request, offset: int = Query(0, ge=0), limit: int = Query(100, ge=1, le=1000)) -> dict[str, Any]:
        return service_for(request).videos(offset, limit)

    @r.get("/api/videos/{video_id:int}", summary="One video's metadata", responses={404: {"description": "no such video"}})
    def video(request: Request, video_id: int) -> dict[str, Any]:
        s = service_for(request)
        return s.video_json(s.record(video_id))

    @r.get("/api/videos/{video_id:int}/curve", summary="A query's score over one video's windows",
           responses={404: {"description": "no such video"}, 422: {"description": "invalid parameters"}})
    def curve(
        request: Request,
        video_id: int,
        q: str = Query("", max_length=mq, description="the query"),
        like: str = Query("", max_length=300, description="instead of q: [INDEX:]VIDEO_ID@SECONDS"),
    ) -> dict[str, Any]:
        """`starts`, `ends` (seconds) and `scores` (dot products) of every window of the video,
        in time order, for `q` (or the window `like` names), and `cosine` (normalised scores)."""
        return _curve(request.app.state.indexes, service_for(request), video_id, q, like)


def _file_response(s: SearchService, video_id: int, request: Request) -> Response:
    """The ``/api/videos/{id}/file`` answer: the whole file, a 206 range of it, the headers alone
    (HEAD) or 416; the file is opened (and checked) by ``s.open_file``."""
    rec = s.record(video_id)
    fh, st = s.open_file(rec)
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
            return error_response(416, f"range not satisfiable: the file has {size} bytes",
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
        return OpenFileResponse(fh, first, length, status, headers)
    except BaseException:
        fh.close()
        raise


def _thumbnail_response(s: SearchService, video_id: int, t: float, width: int, cache: LRU,
                        slots: threading.BoundedSemaphore) -> Response:
    """The JPEG of video ``video_id``'s frame near ``t`` s (0.1 s steps, cached in ``cache``;
    decoded holding one of ``slots``), or 422 when the frame cannot be decoded."""
    rec = s.record(video_id)
    fh, st = s.open_file(rec)
    with fh:
        duration = float(rec.duration or 0)
        if duration > 0:
            t = min(t, max(0.0, duration - 0.05))
        t = round(t, 1)  # 0.1 s steps make the cache useful
        key = (video_id, t, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, width)
        data = cache.get(key)
        if data is None:
            with slots:
                try:  # decode the checked open file, not whatever the path names by now
                    data = grab_thumbnail(fd_path(fh, rec.path), t, width)
                except Exception as exc:  # noqa: BLE001 - any decoder failure is the file's fault
                    reason = str(exc).replace(fd_path(fh, rec.path), rec.path)
                    return error_response(422, f"could not decode a frame of video {video_id} at {t}s: {reason}")
            cache.put(key, data)
    return Response(data, media_type="image/jpeg",
                    headers={"Cache-Control": "max-age=3600", "X-Content-Type-Options": "nosniff"})


def _clip_response(s: SearchService, video_id: int, start: float, end: float, clips: ClipLimits) -> Response:
    """The span ``[start, end)`` of video ``video_id`` cut into a temporary MP4, sent and removed;
    422 for a bad span or a failed cut, 429 when too many cuts run or too many clips (or bytes)
    wait on disk to be sent (``ClipLimits``)."""
    rec = s.record(video_id)
    try:
        a, b = check_span(start, end, float(rec.duration or 0), max_seconds=clips.max_seconds)
    except ClipError as exc:
        raise ApiError(422, str(exc)) from None
    fh, _ = s.open_file(rec)
    try:
        claim = clips.claim()
    except ClipBusyError as exc:
        fh.close()
        raise ApiError(429, str(exc), headers={"Retry-After": "2"}) from None
    tmp = tempfile.mkdtemp(prefix="milnce-clip-")
    name = clip_file_name(rec.path, a, b)
    out = os.path.join(tmp, name)
    try:
        with fh:
            cut_clip(fd_path(fh, rec.path), a, b, out, duration=float(rec.duration or 0), limits=clips, name=rec.path)
        held = open(out, "rb", buffering=0)  # noqa: SIM115 - closed by the response
        try:
            claim.add(os.fstat(held.fileno()).st_size)
        except BaseException:
            held.close()
            raise
    except ClipBusyError as exc:
        claim.release()
        raise ApiError(429, str(exc), headers={"Retry-After": "2"}) from None
    except ClipError as exc:
        claim.release()
        raise ApiError(422, str(exc)) from None
    except BaseException:
        claim.release()
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # the open file keeps the clip until it is sent
    size = os.fstat(held.fileno()).st_size
    headers = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store", "Content-Type": "video/mp4",
               "Content-Length": str(size), "Content-Disposition": f'attachment; filename="{name}"'}
    return HeldFileResponse(held, size, headers, claim.release, clips.send_timeout)


def media_router(thumbnail_width: int, thumbnail_cache: LRU, clip_limits: ClipLimits | None = None) -> APIRouter:
    """``/api/videos/{id}/file`` (ranges), ``/api/videos/{id}/thumbnail`` and ``/api/videos/{id}/clip``."""
    r = APIRouter()
    clips = clip_limits or ClipLimits()
    thumb_slots = threading.BoundedSemaphore(2)  # decoding is CPU-heavy: at most 2 at once

    @r.head("/api/videos/{video_id:int}/file", include_in_schema=False)
    @r.get("/api/videos/{video_id:int}/file", summary="The video file",
           responses={206: {"description": "partial content (Range)"},
                      403: {"description": "outside the index's collection roots"},
                      404: {"description": "unknown id or file missing"},
                      409: {"description": "the file changed since indexing"},
                      416: {"description": "range not satisfiable"}})
    def video_file(video_id: int, request: Request) -> Response:
        """The file of a video, while it is still the indexed file (409 otherwise); a
        single-range request (`Range: bytes=a-b`) is answered 206."""
        return _file_response(service_for(request), video_id, request)

    @r.get("/api/videos/{video_id:int}/thumbnail", summary="JPEG of the frame at t seconds",
           responses={200: {"content": {"image/jpeg": {}}}, 404: {"description": "unknown id or file missing"},
                      409: {"description": "the file changed since indexing"}})
    def thumbnail(request: Request, video_id: int,
                  t: float = Query(0.0, ge=0, le=1e7, description="time in seconds")) -> Response:
        return _thumbnail_response(service_for(request), video_id, t, thumbnail_width, thumbnail_cache, thumb_slots)

    @r.get("/api/videos/{video_id:int}/clip", summary="The moment start..end as an MP4 file (re-encoded, exact)",
           responses={200: {"content": {"video/mp4": {}}}, 403: {"description": "outside the collection roots"},
                      404: {"description": "unknown id or file missing"},
                      409: {"description": "the file changed since indexing"},
                      422: {"description": "a span outside the video, empty or too long"},
                      429: {"description": "too many clips are being cut; retry later"}})
    def clip(request: Request, video_id: int,
             start: float = Query(..., ge=0, le=1e7, description="seconds"),
             end: float = Query(..., ge=0, le=1e7, description="seconds")) -> Response:
        """The span `[start, end)` of the video cut exactly (H.264 + AAC, as `milnce clip`), while
        the file is still the indexed one (the same checks as `/file`); at most
        `max_clip_seconds` long (`/api/config`), a few cuts at once (429 when busy)."""
        return _clip_response(service_for(request), video_id, start, end, clips)

    return r


def static_files() -> dict[str, tuple[bytes, str, str]]:
    """name -> (content, content type, etag) for the files of ``milnce/static`` (flat)."""
    out: dict[str, tuple[bytes, str, str]] = {}
    root = resources.files("milnce") / "static"
    for entry in root.iterdir():
        ext = os.path.splitext(entry.name)[1].lower()
        if entry.is_file() and ext in STATIC_TYPES:
            data = entry.read_bytes()
            out[entry.name] = (data, STATIC_TYPES[ext], '"' + hashlib.sha1(data).hexdigest()[:16] + '"')
    return out


def ui_router() -> APIRouter:
    """``/`` and ``/static/{name}`` (a fixed list of names: no paths, no listing)."""
    r = APIRouter()
    static = static_files()

    def static_response(name: str, request: Request) -> Response:
        data, ctype, etag = static[name]
        headers = {"ETag": etag, "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff",
                   "Content-Security-Policy": CSP, "Referrer-Policy": "no-referrer"}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        return Response(data, media_type=ctype, headers=headers)

    @r.get("/", include_in_schema=False)
    def ui(request: Request) -> Response:
        return static_response("index.html", request)

    @r.get("/static/{name}", include_in_schema=False)
    def static_file(name: str, request: Request) -> Response:
        if name not in static:
            raise ApiError(404, "Not Found")
        return static_response(name, request)

    return r
