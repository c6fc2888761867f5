"""``serve --restart``: the server child never outlives its supervisor (issue 25 item 9). A real
supervisor process runs a child that listens on a port; killing the supervisor with SIGTERM or
SIGKILL must take the child (and its port) with it, within a few seconds."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")

CHILD = textwrap.dedent("""
    import os, socket, time
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(4)
    print(os.getpid(), s.getsockname()[1], flush=True)
    time.sleep(120)
""")

SUPERVISOR = textwrap.dedent("""
    import sys
    from milnce.commands.serve import supervise
    sys.exit(supervise([sys.executable, "-c", sys.argv[1]], pause_s=0.0))
""")


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rpartition(")")[2].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def _wait_dead(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return not _alive(pid)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_the_server_child_dies_with_its_supervisor(sig):
    import milnce  # the sources under test, in the child too

    src = os.path.dirname(os.path.dirname(os.path.abspath(milnce.__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    sup = subprocess.Popen([sys.executable, "-c", SUPERVISOR, CHILD], stdout=subprocess.PIPE, text=True, env=env)
    child = 0
    try:
        line = sup.stdout.readline() if sup.stdout else ""  # the child's pid and port
        child, port = (int(x) for x in line.split())
        assert _alive(child)
        sup.send_signal(sig)
        assert sup.wait(timeout=20) in (0, -signal.SIGKILL)
        assert _wait_dead(child, 10), "the server child outlived its supervisor"
        with socket.socket() as s:  # the port is free for the next start
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
            s.listen(1)
    finally:
        if sup.poll() is None:
            sup.kill()
            sup.wait(timeout=10)
        if child and _alive(child):
            os.kill(child, signal.SIGKILL)
