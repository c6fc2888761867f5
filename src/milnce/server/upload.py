"""Query by an uploaded clip: ``POST /api/search/like-upload`` (``upload_router``).

The body is ``multipart/form-data`` with one part named ``file`` (a video, or a still image as a
frozen clip); the search parameters are the query string's, as for ``GET /api/search``, plus
``start``/``end`` (seconds: the span of the clip to use). The request is read as it arrives
into a private temporary folder (mode 0700), never past ``UploadLimits.max_bytes`` (413: also
when the ``Content-Length`` says so, before reading; at most ``RECEIVING`` uploads arrive at once,
429 past that; 408 when one has not arrived within ``timeout``), checked by a short ``av.open`` in a child
process that is killed after ``probe_timeout`` seconds (415: no video stream, not a video or
image; 422: no frame decodes, or the probe did not finish), embedded with the index's window
settings (``milnce.index.likeclip.clip_query``; never more than ``max_seconds`` of it, 413 when
the span asked for is longer) by one worker at a time (429 while one runs; 504 when it takes
longer than ``timeout``, the worker then finishes and frees its slot), ranked as a text query is
(``SearchService.search_vector``: filters, negative terms, pages), and removed. The last query
vectors are kept by the file's SHA-256 and span, so "More results" re-sends the file but does not
embed it again.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO

import anyio
from fastapi import APIRouter, Query, Request

from ..errors import MilnceError
from ..index import DEFAULT_NOT_WEIGHT
from ..video import VIDEO_EXTENSIONS
from .multi import IndexSet
from .routes import video_filter
from .service import ApiError, SearchService
from .thumbs import LRU

if TYPE_CHECKING:  # pragma: no cover
    from python_multipart.multipart import MultipartCallbacks

__all__ = ["UploadLimits", "upload_router", "probe_upload", "PROBE_SCRIPT"]

log = logging.getLogger("milnce.server")

VECTOR_CACHE = 16  # query vectors kept (by the file's SHA-256 and span)
RECEIVING = 4  # uploads being received at once (each at most max_bytes on disk); more answer 429
IMAGE_FORMATS = {"png_pipe": ".png", "jpeg_pipe": ".jpg", "image2": ".png", "webp_pipe": ".png", "bmp_pipe": ".png"}


@dataclass(frozen=True)
class UploadLimits:
    """The upload endpoint's caps (``milnce serve --upload-max-mb/--upload-max-seconds/--upload-timeout``)."""

    max_bytes: int = 50 * 2**20  # the request body (the file and the multipart framing)
    max_seconds: float = 60.0  # the span of the clip that is embedded
    timeout: float = 120.0  # seconds for embedding one upload (504 after)
    probe_timeout: float = 20.0  # seconds for the child process that checks the file


# Run as ``python -I -c PROBE_SCRIPT FILE`` (PyAV only, no milnce): one JSON line with the
# container format, whether it has a video stream, the header duration and whether a frame decodes.
PROBE_SCRIPT = r"""
import json, sys
out = {"format": None, "video": False, "duration": None, "frame": False, "error": None}
try:
    import av
    with av.open(sys.argv[1], metadata_errors="ignore") as c:
        out["format"] = c.format.name
        vs = [s for s in c.streams if s.type == "video"]
        if vs:
            s = vs[0]
            out["video"] = True
            if s.duration and s.time_base:
                out["duration"] = float(s.duration * s.time_base)
            elif c.duration:
                out["duration"] = c.duration / 1e6
            try:
                for _ in c.decode(s):
                    out["frame"] = True
                    break
            except Exception as e:
                out["error"] = (type(e).__name__ + ": " + str(e))[:200]
except Exception as e:
    out["error"] = (type(e).__name__ + ": " + str(e))[:200]
print(json.dumps(out))
"""


def probe_upload(path: str, timeout: float) -> dict[str, Any]:
    """What ``PROBE_SCRIPT`` says about ``path``, run in a child process killed after ``timeout``
    seconds (422 then)."""
    try:
        done = subprocess.run([sys.executable, "-I", "-c", PROBE_SCRIPT, path], capture_output=True, text=True,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise ApiError(422, f"the upload could not be read within {timeout:g} s") from None
    try:
        return dict(json.loads(done.stdout.strip().splitlines()[-1]))
    except (ValueError, IndexError):
        raise ApiError(422, f"the upload could not be read (the decoder exited with status {done.returncode})") from None


def _part_name(headers: dict[bytes, bytes]) -> tuple[str, str]:
    """(field name, file name) of a part's ``Content-Disposition``."""
    from python_multipart.multipart import parse_options_header

    _, params = parse_options_header(headers.get(b"content-disposition", b""))
    return (params.get(b"name", b"").decode("utf-8", "replace"),
            params.get(b"filename", b"").decode("utf-8", "replace"))


class FilePart:
    """``python-multipart`` callbacks that write the first part named ``file`` to ``path`` as it
    arrives (hashing it with SHA-256) and count the parts; ``name``: the client's file name (None
    until that part's headers are read)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.headers: dict[bytes, bytes] = {}
        self.field = b""
        self.value = b""
        self.name: str | None = None
        self.out: BinaryIO | None = None
        self.parts = 0
        self.digest = hashlib.sha256()

    def callbacks(self) -> MultipartCallbacks:
        """The parser's callbacks."""
        return {"on_header_field": self.header_field, "on_header_value": self.header_value,
                "on_header_end": self.header_end, "on_headers_finished": self.headers_finished,
                "on_part_data": self.part_data, "on_part_end": self.part_end}

    def header_field(self, data: bytes, start: int, end: int) -> None:
        self.field += data[start:end]

    def header_value(self, data: bytes, start: int, end: int) -> None:
        self.value += data[start:end]

    def header_end(self) -> None:
        self.headers[bytes(self.field).lower()] = bytes(self.value)
        self.field, self.value = b"", b""

    def headers_finished(self) -> None:
        name, filename = _part_name(self.headers)
        self.parts += 1
        if name == "file" and self.name is None:
            self.name = filename or "upload"
            self.out = open(self.path, "xb")  # noqa: SIM115 - closed at the part's end (or by close)

    def part_data(self, data: bytes, start: int, end: int) -> None:
        if self.out is not None:
            self.out.write(data[start:end])
            self.digest.update(data[start:end])

    def part_end(self) -> None:
        self.close()
        self.out = None
        self.headers = {}

    def close(self) -> None:
        """Close the file (a body cut short, or refused, mid-part)."""
        if self.out is not None:
            self.out.close()


async def receive_file(request: Request, folder: str, max_bytes: int) -> tuple[str, str, str]:
    """The ``file`` part of a multipart body written to ``folder`` as it arrives: (path, the
    client's file name, SHA-256). 413 past ``max_bytes`` of body, 415 for another content type,
    422 without a ``file`` part."""
    from python_multipart.multipart import MultipartParser, parse_options_header

    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if ctype != b"multipart/form-data" or not boundary:
        raise ApiError(415, "send the clip as multipart/form-data with a part named 'file'")
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > max_bytes:
        raise ApiError(413, f"the upload is {int(length) / 2**20:.1f} MiB; at most {max_bytes / 2**20:g} MiB are accepted")
    part = FilePart(os.path.join(folder, "upload"))
    parser = MultipartParser(boundary, part.callbacks())
    seen = 0
    try:
        async for chunk in request.stream():
            seen += len(chunk)
            if seen > max_bytes:
                raise ApiError(413, f"the upload is larger than {max_bytes / 2**20:g} MiB")
            if part.parts > 16:
                raise ApiError(422, "too many parts in the upload")
            try:
                parser.write(chunk)
            except Exception as exc:  # noqa: BLE001 - python-multipart's errors are the body's fault
                raise ApiError(422, f"malformed multipart body ({type(exc).__name__})") from None
        try:
            parser.finalize()
        except Exception as exc:  # noqa: BLE001 - as above
            raise ApiError(422, f"malformed multipart body ({type(exc).__name__})") from None
    finally:
        part.close()
    if part.name is None:
        raise ApiError(422, "the upload has no part named 'file'")
    if os.path.getsize(part.path) == 0:
        raise ApiError(422, "the uploaded file is empty")
    return part.path, part.name, part.digest.hexdigest()


def checked_file(path: str, client_name: str, limits: UploadLimits, start: float | None,
                 end: float | None) -> tuple[str, float | None]:
    """The upload renamed to an extension the embedding path reads it by (a still image as
    ``.png``/``.jpg``) and the end of the span to embed (at most ``max_seconds`` after the start):
    415 without a video stream, 422 when no frame decodes, 413 when the span is too long."""
    info = probe_upload(path, limits.probe_timeout)
    if not info.get("video"):
        raise ApiError(415, "the upload is not a video or an image"
                       + (f" ({info['error']})" if info.get("error") and info.get("format") is None else ""))
    if not info.get("frame"):
        raise ApiError(422, "no frame of the upload could be decoded" + (f" ({info['error']})" if info.get("error") else ""))
    fmt = str(info.get("format") or "")
    ext = IMAGE_FORMATS.get(fmt)
    if ext is None:
        given = os.path.splitext(client_name)[1].lower()
        ext = given if given in VIDEO_EXTENSIONS else ".bin"
    named = path + ext
    os.rename(path, named)
    if fmt in IMAGE_FORMATS:
        return named, None
    a = start or 0.0
    dur = info.get("duration")
    stop = end if end is not None else (float(dur) if isinstance(dur, (int, float)) else None)
    if stop is not None and stop - a > limits.max_seconds + 1e-6:
        raise ApiError(413, f"the clip's span is {stop - a:.1f} s long; at most {limits.max_seconds:g} s are "
                       "accepted (give start and end)")
    return named, min(stop, a + limits.max_seconds) if stop is not None else a + limits.max_seconds


def _merged(sets: IndexSet, emb: Any, k: int, offset: int, merge: bool, by_video: bool,
            opts: dict[str, Any]) -> dict[str, Any]:
    """``emb`` searched in every index, merged by score (as ``IndexSet.search_all`` merges)."""
    want = offset + k
    bodies = [(name, s.search_vector(emb, want, merge, by_video, **opts)) for name, s in sets.services.items()]
    lists = [[(-float(m["score"]), sets.order[name], j, m) for j, m in enumerate(b["results"])] for name, b in bodies]
    notes = [b["message"] for _, b in bodies if b.get("message")]
    return {"results": [t[3] for t in heapq.merge(*lists, key=lambda t: (t[0], t[1], t[2]))][offset:want],
            "message": " ".join(dict.fromkeys(notes)) or None, "indexes": list(sets.services)}


LIKE_UPLOAD_DOC: dict[str, Any] = {  # the route's OpenAPI description (the body is read by receive_file)
    "summary": "Search the moments like an uploaded clip (or still image)",
    "responses": {413: {"description": "the file or its span is over the caps"},
                  415: {"description": "not multipart, or not a video or image"},
                  422: {"description": "unreadable, no frames in the span, or invalid parameters"},
                  408: {"description": "the upload did not arrive within the server's timeout"},
                  429: {"description": "another upload is being embedded (or 4 are arriving); retry later"},
                  504: {"description": "embedding took longer than the server's timeout"}},
    "openapi_extra": {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["file"],
        "properties": {"file": {"type": "string", "format": "binary",
                                "description": "a video (or a .jpg/.png still image: a frozen clip)"}}}}}}},
}


@dataclass
class Upload:
    """One received upload: its private folder (mode 0700), the file in it, the client's file name
    and the file's SHA-256. ``handed_over``: the embedding worker removes the folder (even after a
    504), else ``discard`` does."""

    folder: str
    path: str = ""
    name: str = ""
    sha: str = ""
    handed_over: bool = False

    def discard(self) -> None:
        """Remove the folder unless the embedding worker owns it."""
        if not self.handed_over:
            shutil.rmtree(self.folder, ignore_errors=True)


class UploadEmbedder:
    """The upload endpoint's shared state: at most ``RECEIVING`` uploads arriving at once, one
    embedded at a time, the last ``VECTOR_CACHE`` query vectors (by SHA-256, span, weights and
    window settings)."""

    def __init__(self, limits: UploadLimits) -> None:
        self.limits = limits
        self.slot = threading.BoundedSemaphore(1)  # one upload decoded and embedded at a time
        self.receiving = threading.BoundedSemaphore(RECEIVING)  # uploads on their way to disk at once
        self.vectors = LRU(VECTOR_CACHE)

    async def receive(self, request: Request) -> Upload:
        """The request's file in a new private folder: 429 while ``RECEIVING`` uploads arrive, 408
        past ``timeout``, ``receive_file``'s answers; the folder is removed on any failure."""
        if not self.receiving.acquire(blocking=False):
            raise ApiError(429, f"{RECEIVING} uploads are arriving; retry in a few seconds", headers={"Retry-After": "2"})
        upload = Upload(tempfile.mkdtemp(prefix="milnce-upload-"))  # mode 0700: private to this user
        try:
            try:
                with anyio.fail_after(self.limits.timeout):
                    upload.path, upload.name, upload.sha = await receive_file(request, upload.folder,
                                                                              self.limits.max_bytes)
            except TimeoutError:
                raise ApiError(408, f"the upload did not arrive within {self.limits.timeout:g} s") from None
            finally:
                self.receiving.release()
        except BaseException:
            upload.discard()
            raise
        return upload

    async def query_vector(self, upload: Upload, service: SearchService, start: float | None,
                           end: float | None) -> Any:
        """The upload's ``ClipQuery`` (``milnce.index.clip_query``) for ``start``..``end`` with
        ``service``'s model: cached, or embedded by a worker thread (429 while another one embeds,
        504 past ``timeout``, 422 for a file that cannot be a query, named by the client's file name)."""
        key = (upload.sha, start, end, service.index.weights_id, json.dumps(service.index.settings, sort_keys=True))
        cached = self.vectors.get(key)
        if cached is not None:
            return cached
        if not self.slot.acquire(blocking=False):
            raise ApiError(429, "another upload is being embedded; retry in a few seconds", headers={"Retry-After": "2"})
        upload.handed_over = True
        try:
            with anyio.fail_after(self.limits.timeout):
                cached = await anyio.to_thread.run_sync(lambda: self.embed(upload, service, start, end),
                                                        abandon_on_cancel=True)
        except TimeoutError:
            raise ApiError(504, f"embedding the upload took longer than {self.limits.timeout:g} s") from None
        except MilnceError as exc:  # the temporary file's path is not the user's business
            raise ApiError(422, re.sub(re.escape(upload.folder) + r"/upload[.a-z0-9]*", lambda _: upload.name,
                                       str(exc))) from None
        self.vectors.put(key, cached)
        return cached

    def embed(self, upload: Upload, service: SearchService, start: float | None, end: float | None) -> Any:
        """The worker: check the file (``checked_file``), embed its span, then remove the folder and
        free the embedding slot (also when the request gave up waiting)."""
        try:
            fpath, stop = checked_file(upload.path, upload.name, self.limits, start, end)
            from ..index import clip_query

            with service.model_lock:
                return clip_query(service.model, service.index.settings, fpath, start, stop, name=upload.name)
        finally:
            shutil.rmtree(upload.folder, ignore_errors=True)
            self.slot.release()


def _checked_span_and_negatives(start: float | None, end: float | None, not_: list[str] | None) -> list[str]:
    """The negative terms given (blank ones dropped); 422 for an empty span or more than 8 terms."""
    if start is not None and end is not None and not end > start:
        raise ApiError(422, "end must be after start")
    negs = [n.strip() for n in (not_ or []) if n.strip()]
    if len(negs) > 8:
        raise ApiError(422, "at most 8 negative terms")
    return negs


def _ranked(sets: IndexSet, service: SearchService, index: str, vector: Any, k: int, merge: bool, by_video: bool,
            opts: dict[str, Any]) -> dict[str, Any]:
    """``vector`` ranked in the one index asked for (or served), or in all of them merged."""
    if sets.several and not index:
        return _merged(sets, vector, k, opts["offset"], merge, by_video, {x: v for x, v in opts.items() if x != "offset"})
    return service.search_vector(vector, k, merge, by_video, **opts)


def upload_router(limits: UploadLimits, max_k: int, default_k: int, max_offset: int) -> APIRouter:
    """``POST /api/search/like-upload``."""
    r = APIRouter()
    embedder = UploadEmbedder(limits)

    @r.post("/api/search/like-upload", **LIKE_UPLOAD_DOC)
    async def like_upload(
        request: Request,
        start: float | None = Query(None, ge=0, le=1e7, description="the span of the clip to use: from (s)"),
        end: float | None = Query(None, ge=0, le=1e7, description="to (s); the span is at most the server's cap"),
        index: str = Query("", max_length=200, description="search this index only (default: all, merged)"),
        k: int = Query(default_k, ge=1, le=max_k, description=f"number of results, 1..{max_k}"),
        by_video: bool = Query(False, description="rank videos: at most one moment (its best) per video"),
        merge: bool = Query(True, description="join adjacent matching windows of a video into one moment"),
        offset: int = Query(0, ge=0, le=max_offset, description="skip the first results: pages of one ranking"),
        not_: list[str] | None = Query(None, alias="not",  # noqa: B008 - a repeatable parameter
                                       description="a sentence the moments should not match (repeatable)"),
        not_weight: float = Query(DEFAULT_NOT_WEIGHT, ge=0, le=1e6, description="weight of the negative terms"),
        under: str = Query("", max_length=4096, description="only videos inside this folder"),
        path_glob: str = Query("", max_length=1000, description="only paths matching this glob (relative)"),
        after: str = Query("", max_length=40, description="modified at or after (YYYY-MM-DD[THH:MM] or epoch s)"),
        before: str = Query("", max_length=40, description="modified before"),
        min_duration: float | None = Query(None, ge=0, le=1e9, description="videos at least this long (s)"),
        max_duration: float | None = Query(None, ge=0, le=1e9, description="videos at most this long (s)"),
    ) -> dict[str, Any]:
        """The moments most like a clip you upload (`file`, multipart), ranked as `/api/search`
        ranks a text query (same filters, negative terms and pages; the same result fields). The
        clip's windows are embedded with the index's window settings and their L2-normalised
        embeddings averaged; a still image is one frozen window (S3D then sees no motion). Caps:
        `/api/config`'s `upload_max_mb` and `upload_max_seconds`; one upload is embedded at a time."""
        t0 = time.perf_counter()
        negs = _checked_span_and_negatives(start, end, not_)
        filt = video_filter(under, path_glob, after, before, min_duration, max_duration)
        sets: IndexSet = request.app.state.indexes
        service: SearchService = sets.get(index or None) if index or not sets.several else sets.first
        upload = await embedder.receive(request)
        try:
            clip = await embedder.query_vector(upload, service, start, end)
            opts: dict[str, Any] = {"offset": offset, "video_filter": filt, "negatives": negs, "not_weight": not_weight}
            body = await anyio.to_thread.run_sync(lambda: _ranked(sets, service, index, clip.vector, k, merge,
                                                                  by_video, opts))
        finally:
            upload.discard()
        source = {"name": upload.name, "start": clip.start, "end": clip.end, "windows": clip.windows,
                  "still": clip.still}
        # a clip has pixels, no words: always the visual ranking, whatever ``mode`` the page sent
        return {"query": "", "k": k, "by_video": by_video, "merge": merge, "mode": "visual", "like": None,
                "like_file": source,
                "not": negs, "not_weight": not_weight if negs else None, "offset": offset,
                "filter": None if filt is None else filt.describe(), **body,
                "took_ms": round((time.perf_counter() - t0) * 1000, 2)}

    return r
