"""``milnce serve`` end to end (``milnce.commands.serve``): the CLI run through ``main(argv)`` or a subprocess."""

from __future__ import annotations

import json
import os
import sys
import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from index_fixtures import W  # noqa: E402
from milnce.cli import main  # noqa: E402
from milnce.index import Index  # noqa: E402
from milnce.server import create_app  # noqa: E402
from milnce.server.multi import IndexMismatchError  # noqa: E402
from milnce.windows import WindowSettings  # noqa: E402
from server_fixtures import multi_windows  # noqa: E402


def test_other_weights_or_settings_refused(three, model, tmp_path, monkeypatch, capsys):
    root, ix = three
    other = Index.create_for(tmp_path / "other", "another-weights", W, roots=["/data"])
    other.add_video("/data/x.mp4", multi_windows(1, 10), size=1, mtime=1.0, content_hash="")
    with pytest.raises(IndexMismatchError, match="other weights"):
        create_app({"a": ix["a"], "other": other}, model)
    wide = Index.create_for(tmp_path / "wide", model.weights_id, WindowSettings(fps=10.0, num_frames=8, size=32, stride=8),
                            roots=["/data"])
    with pytest.raises(IndexMismatchError, match="other window settings"):
        create_app({"a": ix["a"], "wide": wide}, model)
    other.close()
    wide.close()
    # the command: one line, before the model loads
    monkeypatch.setattr("milnce.commands.serve.model_from_args", lambda args: pytest.fail("model loaded"))
    assert main(["serve", "--index", str(root / "a"), "--index", str(tmp_path / "other"), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "other weights" in err and err.count("\n") == 1
    assert main(["serve", "--index", str(tmp_path / "nothing-here")]) != 0
    os.makedirs(tmp_path / "empty")
    assert main(["serve", "--index", str(tmp_path / "empty"), "--port", "0"]) == 2
    assert "neither an index folder" in capsys.readouterr().err


# ----- the command line ---------------------------------------------------------------------


def test_cli_serve_help_and_missing_extra(monkeypatch, capsys, tmp_path, checkpoint):

    with pytest.raises(SystemExit) as exc:
        main(["serve", "--help"])
    assert exc.value.code == 0 and "--port" in capsys.readouterr().out
    monkeypatch.setitem(sys.modules, "fastapi", None)  # as if FastAPI were not installed
    monkeypatch.delitem(sys.modules, "milnce.server", raising=False)
    weights, vocab = checkpoint
    assert main(["serve", "--index", str(tmp_path), "--weights", str(weights), "--vocab", str(vocab), "--no-download"]) == 2
    assert "pip install 'milnce[serve]'" in capsys.readouterr().err


def test_cli_serve_busy_port(capsys, tmp_path):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        assert main(["serve", "--index", str(tmp_path), "--port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
    assert main(["serve", "--index", str(tmp_path / "nope"), "--port", "0"]) == 2
    assert "index folder not found" in capsys.readouterr().err


@pytest.mark.slow  # a uvicorn child process serving a real index
def test_cli_serve_end_to_end(library, checkpoint, tmp_path):
    """``milnce serve DIR --port 0`` in a subprocess: it announces its address and answers."""
    import subprocess
    import urllib.request

    weights, vocab = checkpoint
    idx_dir = library["index_dir"]
    env = {**os.environ, "MILNCE_HOME": str(tmp_path / "home")}
    proc = subprocess.Popen([sys.executable, "-m", "milnce.cli", "serve", "--index", str(idx_dir), "--port", "0", "--weights",
                             str(weights), "--vocab", str(vocab), "--no-download", "--no-access-log"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        line = ""
        deadline = time.monotonic() + 60
        while "serving" not in line and time.monotonic() < deadline and proc.poll() is None:
            line = proc.stdout.readline()
        assert "http://127.0.0.1:" in line, line
        url = line.split("at ", 1)[1].split()[0]
        with urllib.request.urlopen(url + "healthz", timeout=10) as r:
            assert json.loads(r.read())["windows"] == len(library["index"])
        with urllib.request.urlopen(url + "api/search?q=cut+tomato&k=3", timeout=30) as r:
            assert len(json.loads(r.read())["results"]) == 3
    finally:
        proc.terminate()
        proc.wait(20)


def test_serve_clip_options(capsys):
    from milnce import cli
    from milnce.commands.serve import _child_argv, _clip_limits

    args = cli.build_parser().parse_args(["serve", "--index", "ix", "--restart", "--clip-max-files", "3", "--clip-max-mb", "1.5",
                                          "--clip-send-timeout", "20"])
    lim = _clip_limits(args)
    assert (lim.max_files, lim.max_bytes, lim.send_timeout) == (3, int(1.5 * 2**20), 20.0)
    again = cli.build_parser().parse_args(_child_argv(args))  # the --restart child gets the same caps
    assert (again.clip_max_files, again.clip_max_mb, again.clip_send_timeout) == (3, 1.5, 20.0)
    assert cli.main(["serve", "--index", "ix", "--clip-max-mb", "nan"]) == 2
    assert "--clip-max-mb" in capsys.readouterr().err
