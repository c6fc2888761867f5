"""The server tests' libraries and helpers (a pytest plugin, see ``tests/conftest.py``): generated
videos indexed with the conftest model, ``TestClient``s and uvicorn servers over them, synthetic
windows and indexes. Fixtures here are seen by every test; the plain helpers are imported by name
(``from index_fixtures import windows``).

Session-scoped libraries are shared by every test file: a test may change a library's files only
inside a block that puts them back (``swapped`` in ``tests/server/test_files.py``)."""

from __future__ import annotations

import contextlib
import http.client
import shutil
import threading
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from index_fixtures import W
from milnce.windows import WindowSettings
from video_fixtures import make_scene_video, make_video

# ----- indexed libraries ----------------------------------------------------------------------


def indexed_library(root: Path, model: Any, videos: dict[str, dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """For a module- or session-scoped fixture (``yield from``): ``videos`` (a path under ``root/videos`` ->
    ``make_video`` options) made and indexed into ``root/index`` (8 frames of 32 px, stride 8),
    the index opened; yields ``root``, ``videos`` (the folder), ``index``, ``index_dir``,
    ``model`` and ``ids`` (file name -> video id); closes the index afterwards."""
    from milnce.index import Index, build_index

    folder = root / "videos"
    for name, options in videos.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        make_video(folder / name, **options)
    build_index([folder], root / "index", model, window=WindowSettings.for_model(model, num_frames=8, size=32, stride=8),
                progress=False)
    index = Index.open(root / "index", model)
    try:
        ids = {Path(r.path).name: r.id for r in index.videos()}
        yield {"root": root, "videos": folder, "index": index, "index_dir": root / "index", "model": model,
               "ids": ids}
    finally:
        index.close()


@contextlib.contextmanager
def client_for(lib: dict[str, Any], **app_options: Any) -> Iterator[Any]:
    """A ``TestClient`` over ``create_app(lib["index"], lib["model"], **app_options)``."""
    from fastapi.testclient import TestClient

    from milnce.server import create_app

    with TestClient(create_app(lib["index"], lib["model"], **app_options)) as c:
        yield c


FPS = 10
SECONDS = 8


def make_timed_video(path: Path, codec: str, seconds: int = SECONDS, size: tuple[int, int] = (320, 240)) -> None:
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


@pytest.fixture(scope="session")
def library(tmp_path_factory, model):
    """Videos (H.264 mp4 of 320 x 240 and 8 s, MPEG-4 avi of 160 x 120 and 4 s, a copy of the mp4
    deleted after indexing), their index (8 frames of 64 px every 0.8 s) and the model. Read only."""
    from milnce.index import Index, build_index

    root = tmp_path_factory.mktemp("library")
    vids = root / "videos"
    vids.mkdir()
    make_timed_video(vids / "kitchen.mp4", "libx264")
    make_timed_video(vids / "garage.avi", "mpeg4", seconds=4, size=(160, 120))
    shutil.copy(vids / "kitchen.mp4", vids / "gone.mp4")
    idx_dir = root / "index"
    build_index([vids], idx_dir, model, progress=False, window=WindowSettings.for_model(model, num_frames=8, size=64, stride=8))
    (vids / "gone.mp4").unlink()
    index = Index.open(idx_dir, model)
    ids = {Path(r.path).name: r.id for r in index.videos()}
    yield {"index": index, "model": model, "ids": ids, "videos": vids, "index_dir": idx_dir}
    index.close()


@pytest.fixture(scope="module")
def client(library):
    """A ``TestClient`` over ``library`` (one app a test module: its caches start empty)."""
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from milnce.server import create_app

    with TestClient(create_app(library["index"], library["model"])) as c:
        yield c


@pytest.fixture(scope="session")
def clip_lib(tmp_path_factory, model):
    """For cutting clips: ``a.mp4`` (4 s, 64 x 48) and ``late.ts`` (MPEG-TS, lossless, with audio,
    its first frame at 1.4 s). Read only."""
    yield from indexed_library(tmp_path_factory.mktemp("cliplim"), model, {
        "a.mp4": {"n": 40, "width": 64, "height": 48},
        "late.ts": {"rate": 10, "pts_ms": [1400 + 100 * i for i in range(40)], "audio": True,
                    "options": {"crf": "0", "preset": "ultrafast", "g": "10"}},
    })


@pytest.fixture(scope="session")
def trust_lib(tmp_path_factory, model):
    """``a.mp4`` and ``b.mp4`` (with the marker), 4 s of 96 x 64. Tests that change a file put it
    back before they end (``swapped``)."""
    yield from indexed_library(tmp_path_factory.mktemp("trust"), model, {
        "a.mp4": {"n": 40, "width": 96, "height": 64},
        "b.mp4": {"n": 40, "width": 96, "height": 64, "marker": True},
    })


@pytest.fixture(scope="module")
def trust_client(trust_lib):
    with client_for(trust_lib) as c:
        yield c


@pytest.fixture(scope="session")
def wire_lib(tmp_path_factory, model):
    """``a.mp4``, ``sub/b.mp4`` (with the marker), 4 s, and ``c.mkv``, 3 s, all 96 x 64. Read only."""
    yield from indexed_library(tmp_path_factory.mktemp("wire"), model, {
        "a.mp4": {"n": 40, "width": 96, "height": 64},
        "sub/b.mp4": {"n": 40, "width": 96, "height": 64, "marker": True},
        "c.mkv": {"n": 30, "width": 96, "height": 64},
    })


SCENE_WINDOW = {"fps": 10.0, "num_frames": 8, "size": 64, "stride": 4}


@pytest.fixture(scope="session")
def scene_lib(tmp_path_factory, model) -> Iterator[dict[str, Any]]:
    """Scene videos ``red.mp4`` (3 s) and ``green.mp4`` (2.5 s) indexed with ``SCENE_WINDOW``:
    ``root``, ``vids``, ``index``, ``model``. Read only."""
    from milnce.index import Index, build_index

    root = tmp_path_factory.mktemp("scenes")
    vids = root / "videos"
    make_scene_video(vids / "red.mp4", 3.0, (220, 30, 30), 1)
    make_scene_video(vids / "green.mp4", 2.5, (30, 200, 40), 2)
    build_index([vids], root / "ix", model, progress=False, window=WindowSettings.for_model(model, **SCENE_WINDOW))
    index = Index.open(root / "ix", model)
    yield {"root": root, "vids": vids, "index": index, "model": model}
    index.close()


# ----- synthetic windows and indexes ----------------------------------------------------------

# ``W``, ``windows`` and ``make_index`` (random-window indexes, no model) are index_fixtures'.


@pytest.fixture(scope="session")
def index_client(model):
    """``index_client(index)``: a ``TestClient`` over ``create_app(index, model)`` (no refresh,
    server errors answered as 500s)."""
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from milnce.server import create_app

    def make(index: Any) -> Any:
        return TestClient(create_app(index, model, refresh_interval=0), raise_server_exceptions=False)

    return make


def multi_windows(seed: int, n: int) -> SimpleNamespace:
    """``n`` random windows (0.8 s every 0.4 s) with a slow common wave, so neighbours are alike."""
    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((n, 512)).astype(np.float32)
    emb += 0.5 * np.sin(np.arange(n) / 3.0)[:, None].astype(np.float32) * rng.standard_normal(512).astype(np.float32)
    starts = np.arange(n, dtype=np.float64) * 0.4
    return SimpleNamespace(starts=starts, ends=starts + 0.8, embeddings=emb, duration=float(starts[-1] + 0.8))


@pytest.fixture(scope="session")
def three(tmp_path_factory, model):
    """Indexes "a" (videos 0-5), "b" (6-11) and "all" (0-11), random windows; paths need not exist.
    Read only."""
    from milnce.index import Index

    root = tmp_path_factory.mktemp("multi")
    paths = [f"/data/{'ab'[i // 6]}/v{i}.mp4" for i in range(12)]
    made = {}
    for name, ids in (("a", range(6)), ("b", range(6, 12)), ("all", range(12))):
        ix = Index.create_for(root / name, model.weights_id, W, roots=["/data"])
        for i in ids:
            ix.add_video(paths[i], multi_windows(i, 20 + 3 * i), size=10 + i, mtime=1.7e9 + i, content_hash="")
        ix.close()
        made[name] = Index.open(root / name, model)
    yield root, made
    for ix in made.values():
        ix.close()


# ----- a real server, raw HTTP and ASGI -------------------------------------------------------


@contextlib.contextmanager
def serving(app: Any) -> Iterator[int]:
    """``app`` under uvicorn in a thread on a free loopback port; yields the port."""
    import uvicorn

    from milnce.server import listen

    sock = listen("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture(scope="module")
def live(library):
    """A real uvicorn server over ``library`` on a free loopback port, in a thread, with the Host
    check on: ``(base URL, port)``. Module-scoped: no server thread outlives the module (a later
    ``fork`` with a ``preexec_fn``, as ``milnce.server.supervise`` does, is unsafe beside threads)."""
    pytest.importorskip("uvicorn")
    from milnce.server import create_app

    app = create_app(library["index"], library["model"], allowed_hosts=["127.0.0.1", "localhost"])
    with serving(app) as port:
        yield f"http://127.0.0.1:{port}", port


def raw_get(port: int, path: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    """GET with the path sent exactly as given (no client-side normalisation of '..')."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest("GET", path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", (headers or {}).pop("Host", f"127.0.0.1:{port}"))
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        conn.endheaders()
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


TRAVERSALS = [
    "/api/videos/../../etc/passwd", "/api/videos/..%2F..%2Fetc%2Fpasswd", "/api/videos/%2e%2e/%2e%2e/etc/passwd",
    "/api/videos/0/../../../etc/passwd", "/api/videos/0%2F..%2F..%2Fetc%2Fpasswd/file", "/api/videos/-1/file",
    "/api/videos/0x1/file", "/api/videos//etc/passwd/file", "/static/../server.py", "/static/..%2Fserver.py",
    "/static/%2e%2e%2fserver.py", "/static/%2e%2e/%2e%2e/pyproject.toml", "/static/..", "/static/", "/static",
    "/static/%2fetc%2fpasswd", "/static//etc/passwd", "/etc/passwd", "/api/videos/%00/file", "/api/videos/..%5c..%5cetc",
]


def asgi_request(path: str, query: str, headers: list[tuple[bytes, bytes]] | None = None) -> dict[str, Any]:
    """The ASGI scope of ``GET path?query`` (Host: localhost unless ``headers`` are given)."""
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
            "path": path, "raw_path": path.encode(), "query_string": query.encode(), "root_path": "",
            "headers": headers or [(b"host", b"localhost")], "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 80)}


def asgi_call(app: Any, scope: dict[str, Any]) -> tuple[int, bytes]:
    """``app`` called once with ``scope`` and an empty body: (status, body)."""
    import anyio

    got: list[int] = []
    body: list[bytes] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            got.append(message["status"])
        else:
            body.append(message.get("body", b""))

    anyio.run(app, scope, receive, send)
    return got[0], b"".join(body)
