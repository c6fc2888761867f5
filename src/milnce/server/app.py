"""The FastAPI app over an index: ``create_app(index, model)``, its routes, the ``Host`` check,
errors in one shape and the warm-up search (the endpoints are listed in ``milnce.server``).

Searches run in FastAPI's threadpool, one model call at a time (a lock): torch uses the cores
itself. A damaged approximate (ANN) index is reported by ``/healthz`` and searches fall back to
exact search. Thumbnails are kept in a small in-memory LRU cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
import threading
import time
import warnings
from email.utils import formatdate
from importlib import resources
from typing import Any, BinaryIO

import anyio
import numpy as np
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from .files import (
    FILE_CHANGED,
    MIME_TYPES,
    PLAYABLE,
    FileChangedError,
    RangeNotSatisfiable,
    _fd_path,
    _OpenFileResponse,
    _recorded_hash,
    file_state,
    open_indexed_file,
    parse_range,
)
from .thumbs import _LRU, THUMB_CACHE_ENTRIES, THUMB_WIDTH, grab_thumbnail

log = logging.getLogger("milnce.server")

DEFAULT_K = 10  # the one default number of results: API, UI (through /api/config) and CLI
MAX_QUERY_CHARS = 500
MAX_K = 100
QUERY_CACHE_ENTRIES = 64

STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".ico": "image/x-icon"}
# The UI loads nothing from other origins.
CSP = ("default-src 'self'; img-src 'self' data:; media-src 'self'; script-src 'self'; "
       "style-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")

_LIKE_RE = re.compile(r"^\s*([0-9]{1,12})\s*(?:@\s*([0-9]{1,9}(?:\.[0-9]{0,6})?)\s*)?$", re.ASCII)


def parse_like(value: str) -> tuple[int, float] | None:
    """``"ID"`` or ``"ID@SECONDS"`` (ASCII digits) -> ``(video_id, seconds)``; None if malformed."""
    m = _LIKE_RE.match(value or "")
    if not m:
        return None
    return int(m.group(1)), float(m.group(2) or 0.0)


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


def _error(status: int, message: str, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    """The one error shape of the API: ``{"error": {"status": ..., "message": ..., **extra}}``."""
    return JSONResponse({"error": {"status": status, "message": message, **extra}}, status_code=status,
                        headers=headers)


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
    from .. import __version__
    from ..errors import MilnceError

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
