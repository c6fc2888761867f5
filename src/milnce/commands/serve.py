"""The ``serve`` command: web UI and JSON API over an index (optional extra ``serve``)."""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Callable
from typing import Any

from ..errors import MissingFileError
from .common import CommandError, add_index_option, add_model_options, model_for_index, model_from_args

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
        epilog="Example: milnce serve --index my_index --port 8000, then open http://127.0.0.1:8000/",
    )
    add_index_option(p, "index folder (from 'milnce index'); several, or a folder of index folders, are served "
                     "together (same weights and window settings; searches merge them, or pick one)",
                     required=True, many=True, legacy="*")
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
    add_model_options(p)
    p.set_defaults(func=cmd_serve)


def _child_argv(args: argparse.Namespace) -> list[str]:
    """The same ``serve`` command line, without ``--restart``."""
    argv = ["serve", *(a for d in args.index for a in ("--index", d)), "--host", args.host, "--port", str(args.port), "--log-level", args.log_level,
            "--device", args.device, "--precision", args.precision, "--clip-max-files", str(args.clip_max_files),
            "--clip-max-mb", repr(args.clip_max_mb), "--clip-send-timeout", repr(args.clip_send_timeout)]
    for opt in ("weights", "vocab"):
        if getattr(args, opt, None):
            argv += [f"--{opt}", getattr(args, opt)]
    for flag, on in (("--no-access-log", args.no_access_log), ("--eager", args.eager),
                     ("--no-download", args.no_download)):
        if on:
            argv.append(flag)
    return argv


def _die_with(parent: int) -> Callable[[], None]:
    """A ``preexec_fn`` for the child: on Linux, ask the kernel to SIGKILL it when its parent (the
    supervisor) dies, whatever killed the supervisor (``prctl(PR_SET_PDEATHSIG)``); if the
    supervisor is already gone, exit at once."""

    def setup() -> None:
        import ctypes
        import signal

        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):  # pragma: no cover - not Linux
            return
        if os.getppid() != parent:  # the supervisor died before prctl took effect
            os._exit(1)

    return setup


def _run_child(command: list[str], grace_s: float) -> tuple[int, bool]:
    """Run ``command`` until it exits: (its status, whether the supervisor was told to stop).
    SIGTERM to the supervisor is passed on to the child (given ``grace_s`` seconds, then killed);
    Ctrl-C is passed on as SIGINT. The child is killed by the kernel if the supervisor dies."""
    import signal
    import subprocess
    import sys
    import time

    linux = sys.platform.startswith("linux")
    proc = subprocess.Popen(command, preexec_fn=_die_with(os.getpid()) if linux else None)  # noqa: PLW1509
    stopping: list[float] = []

    def on_term(signum: int, frame: Any) -> None:
        if not stopping:
            stopping.append(time.monotonic())
            with contextlib.suppress(OSError):
                proc.send_signal(signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        while True:
            try:
                return proc.wait(timeout=0.2), bool(stopping)
            except subprocess.TimeoutExpired:
                if stopping and time.monotonic() - stopping[0] > grace_s:
                    proc.kill()
            except KeyboardInterrupt:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=grace_s)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                raise
    finally:
        signal.signal(signal.SIGTERM, previous)
        if proc.poll() is None:  # an error in the supervisor itself: the child goes too
            proc.kill()
            proc.wait()


def supervise(command: list[str], *, max_restarts: int = MAX_RESTARTS, window_s: float = 60.0,
              pause_s: float = 1.0, grace_s: float = 10.0) -> int:
    """Run ``command`` (``milnce serve ...`` without ``--restart``) in a child process until it exits by itself (status 0, 2 or Ctrl-C);
    when it dies of a signal or an unexpected status, log the cause and start it again, unless
    it died ``max_restarts`` times within ``window_s`` seconds (then exit 1). The child never
    outlives the supervisor: SIGTERM is passed on to it (then SIGKILL after ``grace_s``), and on
    Linux the kernel kills it when the supervisor dies of anything else (even SIGKILL)."""
    import signal
    import sys
    import time

    deaths: list[float] = []
    while True:
        try:
            rc, stopped = _run_child(command, grace_s)
        except KeyboardInterrupt:
            return 130
        if stopped:
            return 0
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
    from ..index.layout import DB_NAME

    out: list[str] = []
    for d in given:
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

    from ..video.cut import ClipLimits

    if (args.clip_max_files < 1 or not 0 < args.clip_max_mb < 2**40 or not math.isfinite(args.clip_send_timeout)
            or not args.clip_send_timeout > 0):
        raise CommandError("--clip-max-files must be >= 1, --clip-max-mb and --clip-send-timeout finite and > 0")
    return ClipLimits(max_files=args.clip_max_files, max_bytes=int(args.clip_max_mb * 2**20),
                      send_timeout=args.clip_send_timeout)


def cmd_serve(args: argparse.Namespace) -> int:
    _clip_limits(args)  # bad values are refused before anything starts
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
            from ..server.multi import check_comparable_folders

            check_comparable_folders(folders)  # before the model loads
        model = model_for_index(args, folders[0], model_from_args)  # --weights, else the (first) index's record
        from ..index import IndexReader
        from ..server.multi import index_names

        opened: dict[str, IndexReader] = {}
        try:
            for name, d in zip(index_names(folders), folders):
                opened[name] = IndexReader.open(d, model)
            serve(opened if len(opened) > 1 else next(iter(opened.values())), model, host=args.host, port=args.port,
                  log_level=args.log_level, access_log=not args.no_access_log, sock=sock,
                  clip_limits=_clip_limits(args))
        finally:
            for ix in opened.values():
                ix.close()
    finally:
        sock.close()
    return 0
