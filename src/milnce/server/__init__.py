"""Web UI and JSON API over an index: ``create_app(index, model)`` and ``serve(...)``.

Needs the optional extra ``serve`` (FastAPI + uvicorn): ``pip install 'milnce[serve]'``.

Endpoints (OpenAPI at ``/openapi.json``, an offline reference at ``/static/api.html``):

- ``GET /``                                   the single-page UI (``milnce/static``)
- ``GET /healthz``                            liveness, index size, ANN state (``status``: ok / degraded)
- ``GET /api/config``                         defaults and limits (``default_k``, ``max_k``, ...), read by the UI
- ``GET /api/search?q=...&k=10``              moments for a query, best first (``by_video``, ``merge``)
- ``GET /api/search?like=ID@SECONDS``         moments like the window of video ``ID`` at that time
- ``POST /api/search/like-upload``            moments like an uploaded clip or still (multipart ``file``)
- ``GET /api/videos``                         the indexed videos (paged)
- ``GET /api/videos/{id}``                    one video's metadata
- ``GET /api/videos/{id}/curve?q=...``        the query's score over the video's windows (starts, ends, scores)
- ``GET /api/videos/{id}/file``               the video file, with HTTP range requests (206)
- ``GET /api/videos/{id}/thumbnail?t=SEC``    JPEG of the frame at ``t`` seconds

Every error answers ``{"error": {"status": <int>, "message": <str>}}`` (422 adds ``errors``, the
list of invalid parameters). ``/docs`` loads Swagger UI from a CDN (needs internet).

Files are addressed only by their id in the index, never by a path from the request, and are
served only from inside the index's collection roots, opened component by component without
following links (``milnce.server.files``), while they are still the indexed file.

The package, one concern per module: ``service`` (``SearchService``: typed searches, curves,
listings and checked file access over one index and its model; ``ApiError``), ``routes`` (the
FastAPI routers over the service: API, media, UI), ``app`` (``create_app``: the routers, the
``Host`` check, errors in one shape, warm-up), ``files`` (``Range``, identity-checked opening
and streaming of indexed files), ``thumbs`` (thumbnails and the LRU cache), ``upload`` (query by
an uploaded clip: capped streaming, probe in a child process, one worker), ``run`` (``listen``,
``serve``), ``supervise`` (the ``serve --restart`` supervisor).
"""

from __future__ import annotations

from .deps import MISSING_DEPS

try:  # here, not only in the modules: a re-import after they were loaded must still say this
    import fastapi  # noqa: F401
    import starlette  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(MISSING_DEPS) from exc

from ..index import FileChangedError, file_state, open_indexed_file  # noqa: E402
from . import supervise  # noqa: E402 - the module: supervise.supervise, its limits
from .app import (  # noqa: E402 - after the check above
    CSP,
    DEFAULT_K,
    MAX_K,
    MAX_QUERY_CHARS,
    QUERY_CACHE_ENTRIES,
    STATIC_TYPES,
    create_app,
    parse_like,
)
from .files import CHUNK, FILE_CHANGED, MIME_TYPES, PLAYABLE, RangeNotSatisfiable, parse_range  # noqa: E402
from .multi import check_comparable_folders, index_names  # noqa: E402
from .run import LOOPBACK_HOSTS, listen, serve  # noqa: E402
from .thumbs import THUMB_CACHE_ENTRIES, THUMB_WIDTH, grab_thumbnail  # noqa: E402
from .upload import UploadLimits  # noqa: E402

__all__ = ["create_app", "serve", "listen", "parse_range", "open_indexed_file", "file_state", "FileChangedError",
           "MISSING_DEPS", "MAX_QUERY_CHARS", "MAX_K", "DEFAULT_K",
           "CHUNK", "CSP", "FILE_CHANGED", "LOOPBACK_HOSTS", "MIME_TYPES", "PLAYABLE", "QUERY_CACHE_ENTRIES",
           "STATIC_TYPES", "THUMB_CACHE_ENTRIES", "THUMB_WIDTH", "RangeNotSatisfiable", "grab_thumbnail",
           "parse_like", "UploadLimits", "check_comparable_folders", "index_names", "supervise"]
