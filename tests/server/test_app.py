"""``milnce.server.app``: The FastAPI app over an index."""

from __future__ import annotations

import http.client
import shutil
import threading
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest

from milnce.windows import WindowSettings

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

import json

from milnce.index import Index, IndexReader  # noqa: E402
from milnce.server import create_app  # noqa: E402
from video_fixtures import make_video  # noqa: E402


def test_host_check_parses_the_whole_header():
    from milnce.server.app import host_name

    assert host_name("127.0.0.1:8770") == "127.0.0.1" and host_name("[::1]:80") == "[::1]"
    assert host_name("LOCALHOST") == "localhost"
    for evil in ("127.0.0.1:8770@evil.com", "evil.com#127.0.0.1:1", "127.0.0.1:80:80", "127.0.0.1:abc",
                 "a b", "[::1]x", "127.0.0.1/x"):
        assert host_name(evil) == "", evil
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


def test_host_header_check(live):
    _, port = live
    assert raw_get(port, "/healthz")[0] == 200
    status, _, body = raw_get(port, "/healthz", {"Host": "evil.example:80"})
    assert status == 400 and b"Host" in body


@pytest.fixture(scope="module")
def lib(tmp_path_factory, model):
    from milnce.index import Index, build_index

    root = tmp_path_factory.mktemp("cliplim")
    vids = root / "videos"
    vids.mkdir()
    make_video(vids / "a.mp4", n=40, width=64, height=48)
    make_video(vids / "late.ts", rate=10, pts_ms=[1400 + 100 * i for i in range(40)], audio=True,
               options={"crf": "0", "preset": "ultrafast", "g": "10"})
    build_index([vids], root / "index", model, progress=False, window=WindowSettings.for_model(model, num_frames=8, size=32, stride=8))
    index = Index.open(root / "index", model)
    ids = {Path(r.path).name: r.id for r in index.videos()}
    yield {"root": root, "index": index, "model": model, "ids": ids}
    index.close()


def _request(path: str, query: str, headers: list[tuple[bytes, bytes]] | None = None) -> dict[str, Any]:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
            "path": path, "raw_path": path.encode(), "query_string": query.encode(), "root_path": "",
            "headers": headers or [(b"host", b"localhost")], "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 80)}


def _call(app: Any, scope: dict[str, Any]) -> tuple[int, bytes]:
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


@pytest.mark.parametrize("hosts,status", [([b"127.0.0.1:8000"], 200), ([b"127.0.0.1:99999"], 400),
                                          ([b"127.0.0.1:0"], 400),
                                          ([b"localhost", b"evil.example"], 400),
                                          ([b"evil.example", b"localhost"], 400),
                                          ([b"localhost", b"localhost"], 400)])
def test_host_header_port_and_duplicates(lib, hosts, status):
    app = create_app(lib["index"], lib["model"], allowed_hosts=["localhost", "127.0.0.1"])
    assert _call(app, _request("/api/config", "", [(b"host", h) for h in hosts]))[0] == status


# ---- from test_server_openapi.py

SCHEMA = Path(__file__).parents[1] / "data" / "openapi.json"
BASE = Path(__file__).parents[1] / "data" / "openapi-4071740.json"


class _Windows:
    embeddings = np.ones((2, 512), np.float32)
    starts = np.array([0.0, 1.6])
    ends = starts + 3.2
    duration = 4.8


def _schema(tmp_path, model) -> dict:
    with Index.create_for(tmp_path / "ix", model.weights_id, WindowSettings.for_model(model)) as w:
        w.add_videos([("/x/a.mp4", _Windows(), 1, 1.0, "")])
    with IndexReader.open(tmp_path / "ix", model) as ix:
        spec = create_app(ix, model).openapi()
    spec["info"].pop("version")
    return json.loads(json.dumps(spec, sort_keys=True))


def test_openapi_schema_is_unchanged(tmp_path, model):
    want = json.loads(SCHEMA.read_text(encoding="utf-8"))
    want["info"].pop("version")
    assert _schema(tmp_path, model) == want


def _contained(old, new, where: str = "") -> list[str]:
    """Where ``old`` is not contained in ``new`` (dict keys kept with contained values; list items
    kept, dicts matched by their ``name``)."""
    if isinstance(old, dict):
        if not isinstance(new, dict):
            return [where]
        return [p for k, v in old.items() if k != "description"  # prose may grow
                for p in (_contained(v, new[k], f"{where}/{k}") if k in new else [f"{where}/{k}"])]
    if isinstance(old, list):
        if not isinstance(new, list):
            return [where]
        out = []
        for item in old:
            if isinstance(item, dict) and "name" in item:
                match = [n for n in new if isinstance(n, dict) and n.get("name") == item["name"]]
                out += _contained(item, match[0], f"{where}[{item['name']}]") if match else [f"{where}[{item['name']}]"]
            elif item not in new:
                out.append(f"{where}[{item!r}]")
        return out
    return [] if old == new else [f"{where}: {old!r} -> {new!r}"]


def test_the_earlier_api_is_contained_in_todays(tmp_path, model):
    base = json.loads(BASE.read_text(encoding="utf-8"))
    base["info"].pop("version")
    assert _contained(base, _schema(tmp_path, model)) == []
