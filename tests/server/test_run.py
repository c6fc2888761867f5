"""``milnce.server.run``: Running the server."""

from __future__ import annotations

import http.client
import shutil
import threading
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from milnce.windows import WindowSettings

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from milnce.server import create_app  # noqa: E402

FPS = 10
SECONDS = 8


# ----- test videos --------------------------------------------------------------------------


def make_video(path: Path, codec: str, seconds: int = SECONDS, size: tuple[int, int] = (320, 240)) -> None:
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
    make_video(vids / "kitchen.mp4", "libx264")
    make_video(vids / "garage.avi", "mpeg4", seconds=4, size=(160, 120))
    shutil.copy(vids / "kitchen.mp4", vids / "gone.mp4")
    from milnce.index import Index, build_index

    idx_dir = root / "index"  # small windows: 8 frames of 64 px every 0.8 s
    build_index([vids], idx_dir, model, progress=False, window=WindowSettings.for_model(model, num_frames=8, size=64, stride=8))
    (vids / "gone.mp4").unlink()
    index = Index.open(idx_dir, model)
    ids = {Path(r.path).name: r.id for r in index.videos()}
    yield {"index": index, "model": model, "ids": ids, "videos": vids, "index_dir": idx_dir}
    index.close()


def _serve_in_thread(app):
    import uvicorn

    from milnce.server import listen

    sock = listen("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    return server, thread, sock, sock.getsockname()[1]


@pytest.fixture(scope="module")
def live(library):
    """A real uvicorn server on a free loopback port, in a thread, with the Host check on."""
    pytest.importorskip("uvicorn")
    app = create_app(library["index"], library["model"], allowed_hosts=["127.0.0.1", "localhost"])
    server, thread, sock, port = _serve_in_thread(app)
    yield f"http://127.0.0.1:{port}", port
    server.should_exit = True
    thread.join(10)
    sock.close()


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


# ----- traversal, static files, docs, health ------------------------------------------------

TRAVERSALS = [
    "/api/videos/../../etc/passwd", "/api/videos/..%2F..%2Fetc%2Fpasswd", "/api/videos/%2e%2e/%2e%2e/etc/passwd",
    "/api/videos/0/../../../etc/passwd", "/api/videos/0%2F..%2F..%2Fetc%2Fpasswd/file", "/api/videos/-1/file",
    "/api/videos/0x1/file", "/api/videos//etc/passwd/file", "/static/../server.py", "/static/..%2Fserver.py",
    "/static/%2e%2e%2fserver.py", "/static/%2e%2e/%2e%2e/pyproject.toml", "/static/..", "/static/", "/static",
    "/static/%2fetc%2fpasswd", "/static//etc/passwd", "/etc/passwd", "/api/videos/%00/file", "/api/videos/..%5c..%5cetc",
]


def test_traversal_raw_http(live):
    """The same against uvicorn, with the paths on the wire exactly as written."""
    _, port = live
    for path in TRAVERSALS:
        status, _, body = raw_get(port, path)
        assert status in (400, 404), (path, status)
        assert b"root:" not in body and b"def create_app" not in body


def test_concurrent_requests(live, library):
    """Searches and file reads from many threads at once all succeed."""
    base, port = live
    vid = library["ids"]["kitchen.mp4"]
    errors: list[str] = []

    def worker(n: int) -> None:
        for i in range(4):
            path = f"/api/search?q=cut+tomato+{n}&k=5" if i % 2 == 0 else f"/api/videos/{vid}/file"
            status, _, body = raw_get(port, path, {"Range": "bytes=0-1023"} if i % 2 else None)
            if status not in (200, 206):
                errors.append(f"{path}: {status} {body[:100]!r}")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
