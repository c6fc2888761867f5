"""The ``serve`` command: web UI and JSON API over an index (optional extra ``serve``)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from ..errors import MissingFileError
from .common import CommandError, add_index_option, add_model_options, model_for_index, model_from_args
from .vocabulary import add_collection_option

# Kept here too: the server package itself cannot be imported without FastAPI (both checked equal by
# tests/server/test_supervise.py).
MISSING_DEPS = "the web server needs FastAPI and uvicorn: pip install 'milnce[serve]'"
MAX_RESTARTS = 5  # --restart gives up after this many deaths within a minute (server.supervise.MAX_RESTARTS)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve", help="web UI and JSON API to search an index",
        description="Serve a search page (results with thumbnails, playback from the moment) and a "
        "JSON API (/api/search, /api/videos/{id}, /healthz; offline reference at /static/api.html) for an index built by "
        "'milnce index'. Binds to localhost unless --host says otherwise. "
        "Needs: pip install 'milnce[serve]'.",
        epilog="Example: milnce serve --index my_index --port 8000, then open http://127.0.0.1:8000/",
    )
    add_index_option(p, "index folder (from 'milnce index'); several, or a folder of index folders, are served "
                     "together (same weights and window settings; searches merge them, or pick one)",
                     required=True, many=True, legacy="*")
    add_collection_option(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; 0.0.0.0 exposes the videos to the network)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"),
                   help="server log level (default info)")
    p.add_argument("--no-access-log", action="store_true", help="do not log each request")
    p.add_argument("--restart", action="store_true",
                   help="run the server in a child process and start it again when it dies (e.g. of SIGBUS when "
                   "a vector file is truncated under it), logging the cause on stderr; gives up after "
                   f"{MAX_RESTARTS} restarts within a minute")
    p.add_argument("--clip-max-files", type=int, default=4, metavar="N",
                   help="at most N clips (GET /api/videos/{id}/clip) on disk at once, being cut or waiting to be "
                   "sent; more answer 429 (default 4)")
    p.add_argument("--clip-max-mb", type=float, default=1024.0, metavar="MB",
                   help="at most this many MiB of clips on disk at once (default 1024)")
    p.add_argument("--clip-send-timeout", type=float, default=300.0, metavar="SECONDS",
                   help="a clip not downloaded within this many seconds is dropped (default 300)")
    p.add_argument("--upload-max-mb", type=float, default=50.0, metavar="MB",
                   help="query by an uploaded clip (POST /api/search/like-upload): uploads larger than this many MiB "
                   "answer 413 (default 50)")
    p.add_argument("--upload-max-seconds", type=float, default=60.0, metavar="SECONDS",
                   help="an uploaded clip's span longer than this answers 413 (default 60)")
    p.add_argument("--upload-timeout", type=float, default=120.0, metavar="SECONDS",
                   help="embedding one upload longer than this answers 504 (default 120; one upload at a time)")
    add_model_options(p)
    p.set_defaults(func=cmd_serve)


def _child_argv(args: argparse.Namespace) -> list[str]:
    """The same ``serve`` command line, without ``--restart``."""
    argv = ["serve", *(a for d in args.index for a in ("--index", d)), "--host", args.host, "--port", str(args.port), "--log-level", args.log_level,
            "--device", args.device, "--precision", args.precision, "--clip-max-files", str(args.clip_max_files),
            "--clip-max-mb", repr(args.clip_max_mb), "--clip-send-timeout", repr(args.clip_send_timeout),
            "--upload-max-mb", repr(args.upload_max_mb), "--upload-max-seconds", repr(args.upload_max_seconds),
            "--upload-timeout", repr(args.upload_timeout)]
    for opt in ("weights", "vocab", "collection"):
        if getattr(args, opt, None):
            argv += [f"--{opt}", getattr(args, opt)]
    for flag, on in (("--no-access-log", args.no_access_log), ("--eager", args.eager),
                     ("--no-download", args.no_download)):
        if on:
            argv.append(flag)
    return argv


def index_folders(given: list[str]) -> list[str]:
    """The index folders ``serve`` was given: each an index, or a folder whose sub-folders are
    indexes (sorted by name). ``CommandError`` for anything else."""
    from ..index import DB_NAME

    out: list[str] = []
    from ..index import is_milvus_uri

    for d in given:
        if is_milvus_uri(d):  # a Milvus collection (--collection), served beside index folders
            out.append(d)
            continue
        if not os.path.isdir(d):
            raise MissingFileError(f"index folder not found: {d} (build one with 'milnce index')")
        if os.path.isfile(os.path.join(d, DB_NAME)):
            out.append(d)
            continue
        subs = sorted(os.path.join(d, n) for n in os.listdir(d)
                      if os.path.isfile(os.path.join(d, n, DB_NAME)))
        if not subs:
            raise CommandError(f"{d} is neither an index folder nor a folder of index folders")
        out += subs
    if len({os.path.realpath(d) for d in out}) != len(out):
        raise CommandError("the same index is given twice")
    return out


def _clip_limits(args: argparse.Namespace) -> Any:
    """The clip endpoint's caps from ``--clip-*`` (``ClipLimits``); ``CommandError`` for bad values."""
    import math

    from ..video import ClipLimits

    if (args.clip_max_files < 1 or not 0 < args.clip_max_mb < 2**40 or not math.isfinite(args.clip_send_timeout)
            or not args.clip_send_timeout > 0):
        raise CommandError("--clip-max-files must be >= 1, --clip-max-mb and --clip-send-timeout finite and > 0")
    return ClipLimits(max_files=args.clip_max_files, max_bytes=int(args.clip_max_mb * 2**20),
                      send_timeout=args.clip_send_timeout)


def _missing_deps(exc: ImportError) -> str:
    """The missing-extra message, naming the module that is missing."""
    cause = exc.__cause__ if isinstance(exc.__cause__, ImportError) else exc
    missing = f" (no module named {cause.name!r})" if getattr(cause, "name", None) else ""
    return MISSING_DEPS + missing


def _upload_limits(args: argparse.Namespace) -> Any:
    """The upload endpoint's caps from ``--upload-*`` (``UploadLimits``); ``CommandError`` for bad values."""
    import math

    values = (args.upload_max_mb, args.upload_max_seconds, args.upload_timeout)
    if not all(math.isfinite(v) and v > 0 for v in values) or args.upload_max_mb >= 2**20:
        raise CommandError("--upload-max-mb, --upload-max-seconds and --upload-timeout must be finite and > 0")
    try:
        from ..server import UploadLimits
    except ImportError as exc:  # the serve extra is missing: the one message naming it
        raise CommandError(_missing_deps(exc)) from None

    return UploadLimits(max_bytes=int(args.upload_max_mb * 2**20), max_seconds=args.upload_max_seconds,
                        timeout=args.upload_timeout)


def cmd_serve(args: argparse.Namespace) -> int:
    _clip_limits(args)  # bad values are refused before anything starts
    _upload_limits(args)
    if args.restart:
        index_folders(args.index)
        try:
            from ..server import supervise
        except ImportError as exc:
            raise CommandError(_missing_deps(exc)) from None
        return supervise.supervise([sys.executable, "-m", "milnce.cli", *_child_argv(args)], max_restarts=MAX_RESTARTS)
    try:
        import uvicorn  # noqa: F401

        from ..server import listen, serve
    except ImportError as exc:
        raise CommandError(_missing_deps(exc)) from None
    if not 0 <= args.port <= 65535:
        raise CommandError(f"--port must be 0..65535, got {args.port}")
    from ..index import is_milvus_uri

    for d in args.index:
        if not is_milvus_uri(d) and not os.path.isdir(d):
            raise MissingFileError(f"index folder not found: {d} (build one with 'milnce index')")
    try:  # claim the port first: a busy port is reported before the model loads
        sock = listen(args.host, args.port)
    except OSError as exc:
        raise CommandError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc} "
                           "(is another server using that port? pick another with --port)") from None
    try:
        folders = index_folders(args.index)
        if len(folders) > 1:
            from ..server import check_comparable_folders

            check_comparable_folders(folders, args.collection)  # before the model loads
        model = model_for_index(args, folders[0], model_from_args)  # --weights, else the (first) index's record
        from ..index import SearchableIndex, open_index
        from ..server import index_names

        opened: dict[str, SearchableIndex] = {}
        try:
            for name, d in zip(index_names(folders), folders):
                opened[name] = open_index(d, model, readonly=True, collection=args.collection)
            serve(opened if len(opened) > 1 else next(iter(opened.values())), model, host=args.host, port=args.port,
                  log_level=args.log_level, access_log=not args.no_access_log, sock=sock,
                  clip_limits=_clip_limits(args), upload_limits=_upload_limits(args))
        finally:
            for ix in opened.values():
                ix.close()
    finally:
        sock.close()
    return 0
