"""Running the server: ``listen`` (the socket, so a busy port is reported first) and ``serve``
(uvicorn over ``create_app``, restricted to the loopback ``Host`` names when bound to localhost).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..plural import plural
from ..video import ClipLimits
from .app import create_app
from .deps import MISSING_DEPS
from .upload import UploadLimits

if TYPE_CHECKING:  # pragma: no cover
    from ..index import SearchableIndex
    from ..protocols import Encoder

LOOPBACK_HOSTS = ["localhost", "127.0.0.1", "[::1]", "::1"]


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
    index: SearchableIndex | Mapping[str, SearchableIndex] | str | os.PathLike[str],
    model: Encoder | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "info",
    access_log: bool = True,
    announce: bool = True,
    sock: Any = None,
    clip_limits: ClipLimits | None = None,
    upload_limits: UploadLimits | None = None,
) -> None:
    """Serve the UI and API until interrupted. ``index``: an opened index (an ``IndexReader``, or any
    ``milnce.index.SearchableIndex``; several: ``{name: index}``) or its folder (opened read-only with
    ``model``); ``model``: a loaded ``MILNCE`` (default: ``load_model()``);
    ``clip_limits``: the clip endpoint's caps (``milnce.video.cut.ClipLimits``; default its defaults);
    ``upload_limits``: the upload endpoint's (``milnce.server.upload.UploadLimits``);
    ``sock``: an already listening socket (from ``listen(host, port)``) to serve on."""
    try:
        import uvicorn
    except ImportError as exc:
        raise ImportError(MISSING_DEPS) from exc
    if model is None:
        from ..api import load_model

        model = load_model()
    if isinstance(index, (str, os.PathLike)):
        from ..index import open_index

        index = open_index(index, model, readonly=True)
    loopback = _is_loopback(host)
    allowed = LOOPBACK_HOSTS if loopback else None
    app = create_app(index, model, allowed_hosts=allowed, warm_up=True, clip_limits=clip_limits,
                     upload_limits=upload_limits)
    if sock is None:
        sock = listen(host, port)
    bound_port = sock.getsockname()[1]
    shown = f"[{host.strip('[]')}]" if ":" in host else host
    if announce:
        several = list(index.values()) if isinstance(index, Mapping) else [index]
        what = f"{len(several)} indexes: " if len(several) > 1 else ""
        print(f"milnce: serving {what}{plural(sum(len(ix.videos()) for ix in several), 'video')} "
              f"({plural(sum(len(ix) for ix in several), 'window')}) at http://{shown}:{bound_port}/ "
              f"(API reference at /static/api.html); Ctrl-C to stop", flush=True)
        if not loopback:
            print(f"milnce: warning: listening on {host}, not localhost: anyone who can reach this machine "
                  "can search the index and download the indexed videos", flush=True)
    import faulthandler
    import sys

    if not faulthandler.is_enabled():  # a fatal signal (SIGBUS, SIGSEGV) is logged with its traceback
        faulthandler.enable(file=sys.stderr)
    config = uvicorn.Config(app, log_level=log_level, access_log=access_log, workers=1)
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
