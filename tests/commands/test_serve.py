"""``milnce.commands.serve``: The ``serve`` command."""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

SERVE_INSTALLED = importlib.util.find_spec("fastapi") is not None and importlib.util.find_spec("httpx") is not None
needs_serve = pytest.mark.skipif(not SERVE_INSTALLED, reason="the serve extra (fastapi, httpx) is not installed")


def test_serve_restart_comes_back_after_a_fatal_signal(tmp_path, caplog):
    from milnce.server.supervise import supervise

    count = tmp_path / "count"
    child = textwrap.dedent(f"""
        import os, signal, sys
        n = int(open({str(count)!r}).read()) if os.path.exists({str(count)!r}) else 0
        open({str(count)!r}, "w").write(str(n + 1))
        if n < 2:
            os.kill(os.getpid(), signal.SIGBUS)
    """)
    assert supervise([sys.executable, "-c", child], pause_s=0.0) == 0
    assert count.read_text() == "3"
    err = "\n".join(r.getMessage() for r in caplog.records if r.name == "milnce.server")
    assert err.count("died (signal SIGBUS); restarting") == 2
    assert supervise([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGBUS)"],
                     max_restarts=2, pause_s=0.0) == 1  # gives up


@needs_serve
def test_folder_of_indexes(three):
    from milnce.commands.serve import index_folders

    root, _ = three
    assert [Path(p).name for p in index_folders([str(root)])] == ["a", "all", "b"]


CHILD = textwrap.dedent("""
    import os, socket, time
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(4)
    print(os.getpid(), s.getsockname()[1], flush=True)
    time.sleep(120)
""")

# The supervisor: ``milnce/server/supervise.py`` (standard library only) loaded from its file, so
# that the child starts in a fraction of a second instead of importing torch with ``milnce``.
SUPERVISOR = textwrap.dedent("""
    import importlib.util, sys
    spec = importlib.util.spec_from_file_location("supervise", sys.argv[2])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.exit(module.supervise([sys.executable, "-c", sys.argv[1]], pause_s=0.0))
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


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_the_server_child_dies_with_its_supervisor(sig):
    from milnce.server import supervise as module  # the source under test, in the child too

    sup = subprocess.Popen([sys.executable, "-c", SUPERVISOR, CHILD, os.path.abspath(module.__file__)],
                           stdout=subprocess.PIPE, text=True)
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
