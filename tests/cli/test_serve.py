"""``milnce serve`` end to end (``milnce.commands.serve``): the CLI run through ``main(argv)`` or a subprocess."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from milnce.cli import main  # noqa: E402
from milnce.index import Index  # noqa: E402
from milnce.server import create_app  # noqa: E402
from milnce.server.multi import IndexMismatchError  # noqa: E402
from milnce.windows import WindowSettings  # noqa: E402

W = WindowSettings(fps=10.0, num_frames=8, size=32, stride=4)


def _windows(seed: int, n: int) -> SimpleNamespace:
    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((n, 512)).astype(np.float32)
    emb += 0.5 * np.sin(np.arange(n) / 3.0)[:, None].astype(np.float32) * rng.standard_normal(512).astype(np.float32)
    starts = np.arange(n, dtype=np.float64) * 0.4
    return SimpleNamespace(starts=starts, ends=starts + 0.8, embeddings=emb, duration=float(starts[-1] + 0.8))


@pytest.fixture(scope="module")
def three(tmp_path_factory, model):
    """Indexes "a" (videos 0-5), "b" (6-11) and "all" (0-11), random windows; paths need not exist."""
    root = tmp_path_factory.mktemp("multi")
    paths = [f"/data/{'ab'[i // 6]}/v{i}.mp4" for i in range(12)]
    made = {}
    for name, ids in (("a", range(6)), ("b", range(6, 12)), ("all", range(12))):
        ix = Index.create_for(root / name, model.weights_id, W, roots=["/data"])
        for i in ids:
            ix.add_video(paths[i], _windows(i, 20 + 3 * i), size=10 + i, mtime=1.7e9 + i, content_hash="")
        ix.close()
        made[name] = Index.open(root / name, model)
    yield root, made
    for ix in made.values():
        ix.close()


def test_other_weights_or_settings_refused(three, model, tmp_path, monkeypatch, capsys):
    root, ix = three
    other = Index.create_for(tmp_path / "other", "another-weights", W, roots=["/data"])
    other.add_video("/data/x.mp4", _windows(1, 10), size=1, mtime=1.0, content_hash="")
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
FPS = 10
SECONDS = 8


# ----- test videos --------------------------------------------------------------------------


def make_video_server(path: Path, codec: str, seconds: int = SECONDS, size: tuple[int, int] = (320, 240)) -> None:
    """A video whose red channel is ``30 * second`` (so a frame's time can be read back from its
    colour) with a white square moving across it."""
    import av

    w, h = size
    options = {"movflags": "+faststart"} if path.suffix == ".mp4" else {}
    with av.open(str(path), "w", options=options) as out:
        stream = out.add_stream(codec, rate=FPS)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.codec_context.gop_size = FPS
        if codec == "libx264":
            stream.codec_context.options = {"preset": "ultrafast", "profile": "baseline"}
        for i in range(seconds * FPS):
            img = np.zeros((h, w, 3), np.uint8)
            img[..., 0] = min(255, 30 * (i // FPS))
            img[..., 1] = 90
            img[..., 2] = 160
            x = int((w - 40) * i / (seconds * FPS))
            img[h // 2 - 20:h // 2 + 20, x:x + 40] = 255
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, FPS)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


# ----- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def library(tmp_path_factory, model):
    """Videos (H.264 mp4, MPEG-4 avi, one deleted after indexing), their index and the model."""
    root = tmp_path_factory.mktemp("library")
    vids = root / "videos"
    vids.mkdir()
    make_video_server(vids / "kitchen.mp4", "libx264")
    make_video_server(vids / "garage.avi", "mpeg4", seconds=4, size=(160, 120))
    shutil.copy(vids / "kitchen.mp4", vids / "gone.mp4")
    from milnce.index import Index, build_index

    idx_dir = root / "index"  # small windows: 8 frames of 64 px every 0.8 s
    build_index([vids], idx_dir, model, progress=False, window=WindowSettings.for_model(model, num_frames=8, size=64, stride=8))
    (vids / "gone.mp4").unlink()
    index = Index.open(idx_dir, model)
    ids = {Path(r.path).name: r.id for r in index.videos()}
    yield {"index": index, "model": model, "ids": ids, "videos": vids, "index_dir": idx_dir}
    index.close()


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
