"""The ``serve --restart`` supervisor: run the server in a child process and start it again when it
dies (e.g. of SIGBUS when a vector file is truncated under it), logging the cause to
``milnce.server``; the child never outlives the supervisor."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

__all__ = ["MAX_RESTARTS", "supervise"]

log = logging.getLogger("milnce.server")

MAX_RESTARTS = 5  # --restart gives up after this many deaths within a minute


def supervise(command: list[str], *, max_restarts: int = MAX_RESTARTS, window_s: float = 60.0,
              pause_s: float = 1.0, grace_s: float = 10.0) -> int:
    """Run ``command`` (``milnce serve ...`` without ``--restart``) in a child process until it exits by itself (status 0, 2 or Ctrl-C);
    when it dies of a signal or an unexpected status, log the cause and start it again, unless
    it died ``max_restarts`` times within ``window_s`` seconds (then exit 1). The child never
    outlives the supervisor: SIGTERM is passed on to it (then SIGKILL after ``grace_s``), and on
    Linux the kernel kills it when the supervisor dies of anything else (even SIGKILL)."""
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
        cause = death_cause(rc)
        now = time.monotonic()
        deaths = [t for t in deaths if now - t < window_s] + [now]
        if len(deaths) > max_restarts:
            log.error("serve: the server died (%s) %d times within %s s; giving up", cause, len(deaths),
                      f"{window_s:g}")
            return 1
        log.warning("serve: the server died (%s); restarting it", cause)
        time.sleep(pause_s)


def death_cause(rc: int) -> str:
    """A child's exit status in words: ``signal SIGBUS`` for a negative status, else ``exit status N``."""
    try:
        return f"signal {signal.Signals(-rc).name}" if rc < 0 else f"exit status {rc}"
    except ValueError:
        return f"signal {-rc}"


def _die_with(parent: int) -> Callable[[], None]:
    """A ``preexec_fn`` for the child: on Linux, ask the kernel to SIGKILL it when its parent (the
    supervisor) dies, whatever killed the supervisor (``prctl(PR_SET_PDEATHSIG)``); if the
    supervisor is already gone, exit at once."""

    def setup() -> None:
        import ctypes

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
