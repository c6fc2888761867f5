"""The ``serve`` command: web UI and JSON API over an index (optional extra ``serve``)."""

from __future__ import annotations

import argparse
import os

from ..errors import MissingFileError
from .common import CommandError, add_model_options, model_for_index, model_from_args

# Kept here too: the server module itself cannot be imported without FastAPI.
MISSING_DEPS = "the web server needs FastAPI and uvicorn: pip install 'milnce[serve]'"
MAX_RESTARTS = 5  # --restart gives up after this many deaths within a minute


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve", help="web UI and JSON API to search an index",
        description="Serve a search page (results with thumbnails, playback from the moment) and a "
        "JSON API (/api/search, /api/videos/{id}, /healthz; offline reference at /static/api.html) for an index built by "
        "'milnce index'. Binds to localhost unless --host says otherwise. "
        "Needs: pip install 'milnce[serve]'.",
        epilog="Example: milnce serve my_index --port 8000, then open http://127.0.0.1:8000/",
    )
    p.add_argument("index", metavar="DIR", nargs="+",
                   help="index folder (from 'milnce index'); several, or a folder of index folders, are served "
                   "together (same weights and window settings; searches merge them, or pick one)")
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
    add_model_options(p)
    p.set_defaults(func=cmd_serve)


def _child_argv(args: argparse.Namespace) -> list[str]:
    """The same ``serve`` command line, without ``--restart``."""
    argv = ["serve", *args.index, "--host", args.host, "--port", str(args.port), "--log-level", args.log_level,
            "--device", args.device, "--precision", args.precision]
    for opt in ("weights", "vocab"):
        if getattr(args, opt, None):
            argv += [f"--{opt}", getattr(args, opt)]
    for flag, on in (("--no-access-log", args.no_access_log), ("--eager", args.eager),
                     ("--no-download", args.no_download)):
        if on:
            argv.append(flag)
    return argv


def supervise(command: list[str], *, max_restarts: int = MAX_RESTARTS, window_s: float = 60.0,
              pause_s: float = 1.0) -> int:
    """Run ``command`` (``milnce serve ...`` without ``--restart``) in a child process until it exits by itself (status 0, 2 or Ctrl-C);
    when it dies of a signal or an unexpected status, log the cause and start it again, unless
    it died ``max_restarts`` times within ``window_s`` seconds (then exit 1)."""
    import signal
    import subprocess
    import sys
    import time

    deaths: list[float] = []
    while True:
        proc = subprocess.Popen(command)
        try:
            rc = proc.wait()
        except KeyboardInterrupt:
            proc.send_signal(signal.SIGINT)
            proc.wait()
            return 130
        if rc in (0, 2, 130, -signal.SIGINT, -signal.SIGTERM):
            return 0 if rc in (0, -signal.SIGINT, 130, -signal.SIGTERM) else rc
        try:
            cause = f"signal {signal.Signals(-rc).name}" if rc < 0 else f"exit status {rc}"
        except ValueError:
            cause = f"signal {-rc}"
        now = time.monotonic()
        deaths = [t for t in deaths if now - t < window_s] + [now]
        if len(deaths) > max_restarts:
            print(f"milnce: serve: the server died ({cause}) {len(deaths)} times within {window_s:g} s; giving up",
                  file=sys.stderr, flush=True)
            return 1
        print(f"milnce: serve: the server died ({cause}); restarting it", file=sys.stderr, flush=True)
        time.sleep(pause_s)


def index_folders(given: list[str]) -> list[str]:
    """The index folders ``serve`` was given: each an index, or a folder whose sub-folders are
    indexes (sorted by name). ``CommandError`` for anything else."""
    out: list[str] = []
    for d in given:
        if not os.path.isdir(d):
            raise MissingFileError(f"index folder not found: {d} (build one with 'milnce index')")
        if os.path.isfile(os.path.join(d, "index.sqlite")):
            out.append(d)
            continue
        subs = sorted(os.path.join(d, n) for n in os.listdir(d)
                      if os.path.isfile(os.path.join(d, n, "index.sqlite")))
        if not subs:
            raise CommandError(f"{d} is neither an index folder nor a folder of index folders")
        out += subs
    if len({os.path.realpath(d) for d in out}) != len(out):
        raise CommandError("the same index is given twice")
    return out


def check_comparable(folders: list[str]) -> None:
    """Refuse, before the model loads, indexes whose scores cannot be merged (other weights or
    window settings than the first)."""
    from ..index import Index
    from ..server.multi import IndexMismatchError, index_names

    first = None
    for name, d in zip(index_names(folders), folders):
        with Index.open(d) as ix:
            here = (ix.weights_id, dict(ix.settings))
        if first is None:
            first = (name, *here)
        elif here[0] != first[1]:
            raise IndexMismatchError(f"index {name!r} ({d}) was built with other weights ({here[0]}) than "
                                     f"{first[0]!r} ({first[1]}): their scores cannot be compared; serve them separately")
        elif here[1] != first[2]:
            raise IndexMismatchError(f"index {name!r} ({d}) has other window settings than {first[0]!r} "
                                     f"({here[1]} vs {first[2]}): their scores cannot be compared; serve them separately")


def cmd_serve(args: argparse.Namespace) -> int:
    if args.restart:
        index_folders(args.index)
        import sys

        return supervise([sys.executable, "-m", "milnce.cli", *_child_argv(args)])
    try:
        import uvicorn  # noqa: F401

        from ..server import listen, serve
    except ImportError as exc:
        cause = exc.__cause__ if isinstance(exc.__cause__, ImportError) else exc
        missing = f" (no module named {cause.name!r})" if getattr(cause, "name", None) else ""
        raise CommandError(MISSING_DEPS + missing) from None
    if not 0 <= args.port <= 65535:
        raise CommandError(f"--port must be 0..65535, got {args.port}")
    for d in args.index:
        if not os.path.isdir(d):
            raise MissingFileError(f"index folder not found: {d} (build one with 'milnce index')")
    try:  # claim the port first: a busy port is reported before the model loads
        sock = listen(args.host, args.port)
    except OSError as exc:
        raise CommandError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc} "
                           "(is another server using that port? pick another with --port)") from None
    try:
        folders = index_folders(args.index)
        if len(folders) > 1:
            check_comparable(folders)  # before the model loads
        model = model_for_index(args, folders[0], model_from_args)  # --weights, else the (first) index's record
        from ..index import Index
        from ..server.multi import index_names

        opened: dict[str, Index] = {}
        try:
            for name, d in zip(index_names(folders), folders):
                opened[name] = Index.open(d, model, readonly=True)
            serve(opened if len(opened) > 1 else next(iter(opened.values())), model, host=args.host, port=args.port,
                  log_level=args.log_level, access_log=not args.no_access_log, sock=sock)
        finally:
            for ix in opened.values():
                ix.close()
    finally:
        sock.close()
    return 0
