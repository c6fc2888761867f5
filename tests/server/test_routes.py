"""The web server: JSON API (TestClient), a live uvicorn server, and the UI in headless Chromium.

The index is a real one built with ``milnce.index.build_index`` (small windows). The browser test needs ``/usr/bin/chromium`` (Debian
package ``chromium``) and the ``playwright`` Python package; it is skipped without them.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import shutil
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from milnce.server import MAX_K, MAX_QUERY_CHARS, create_app, parse_range  # noqa: E402

CHROMIUM = os.environ.get("MILNCE_TEST_CHROMIUM", "/usr/bin/chromium")
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
    build_index([vids], idx_dir, model, num_frames=8, size=64, stride=8, progress=False)
    (vids / "gone.mp4").unlink()
    index = Index.open(idx_dir, model)
    ids = {Path(r.path).name: r.id for r in index.videos()}
    yield {"index": index, "model": model, "ids": ids, "videos": vids, "index_dir": idx_dir}
    index.close()


@pytest.fixture(scope="module")
def client(library):
    with TestClient(create_app(library["index"], library["model"])) as c:
        yield c


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


def decode_jpeg(data: bytes) -> np.ndarray:
    import av

    with av.open(io.BytesIO(data)) as c:
        return next(c.decode(video=0)).to_ndarray(format="rgb24")


# ----- search -------------------------------------------------------------------------------


def test_search_results(client, library):
    r = client.get("/api/search", params={"q": "cut the tomato", "k": 5})
    assert r.status_code == 200
    body = r.json()
    assert body["words"] == ["cut", "the", "tomato"] and body["unknown_words"] == [] and body["message"] is None
    res = body["results"]
    assert 1 <= len(res) <= 5
    assert [m["score"] for m in res] == sorted((m["score"] for m in res), reverse=True)
    m = res[0]
    for key in ("video_id", "path", "start", "end", "score", "exists", "name", "file_url", "thumbnail_url", "mime", "playable"):
        assert key in m
    assert m["file_url"] == f"/api/videos/{m['video_id']}/file"
    assert m["thumbnail_url"].startswith(f"/api/videos/{m['video_id']}/thumbnail?t=")
    assert m["end"] > m["start"] >= 0
    by_name = {x["name"]: x for x in client.get("/api/search", params={"q": "cut tomato", "k": 100}).json()["results"]}
    assert by_name["kitchen.mp4"]["playable"] and by_name["kitchen.mp4"]["mime"] == "video/mp4"
    assert not by_name["garage.avi"]["playable"] and by_name["garage.avi"]["mime"] == "video/x-msvideo"
    assert by_name["gone.mp4"]["exists"] is False and by_name["kitchen.mp4"]["exists"] is True


def test_search_by_video_and_unknown_words(client):
    res = client.get("/api/search", params={"q": "pour water", "k": 10, "by_video": "true"}).json()["results"]
    ids = [m["video_id"] for m in res]
    assert len(ids) == len(set(ids)) == 3
    body = client.get("/api/search", params={"q": "pour zzyzx water"}).json()
    assert body["results"] and body["unknown_words"] == ["zzyzx"] and "zzyzx" in body["message"]


@pytest.mark.parametrize("q", ["", "   ", "zzyzx qwxv", "!!! ???"])
def test_search_nothing_to_search(client, q):
    r = client.get("/api/search", params={"q": q})
    assert r.status_code == 200
    body = r.json()
    assert body["results"] == [] and body["message"]
    assert ("Empty query" in body["message"]) == (not q.strip())
    if q.strip():
        assert "vocabulary" in body["message"]
    assert client.get("/api/search").json()["message"].startswith("Empty query")


def test_search_bounds(client):
    ok = client.get("/api/search", params={"q": "cut " * (MAX_QUERY_CHARS // 4), "k": MAX_K})
    assert ok.status_code == 200
    long = client.get("/api/search", params={"q": "a" * (MAX_QUERY_CHARS + 1)})
    assert long.status_code == 422
    assert f"at most {MAX_QUERY_CHARS} characters" in long.json()["error"]["message"] and "q" in long.json()["error"]["message"]
    for k in ("0", "-1", str(MAX_K + 1), "ten", "1.5"):
        r = client.get("/api/search", params={"q": "cut", "k": k})
        assert r.status_code == 422, k
        assert r.json()["error"]["message"].startswith("k:")


# ----- videos -------------------------------------------------------------------------------


def test_video_metadata(client, library):
    vid = library["ids"]["kitchen.mp4"]
    r = client.get(f"/api/videos/{vid}")
    assert r.status_code == 200
    v = r.json()
    assert v["id"] == vid and v["name"] == "kitchen.mp4" and v["exists"] is True
    assert v["duration"] == pytest.approx(SECONDS, abs=0.5) and v["num_windows"] >= 1
    assert v["size"] == (library["videos"] / "kitchen.mp4").stat().st_size
    assert client.get(f"/api/videos/{library['ids']['gone.mp4']}").json()["exists"] is False
    listing = client.get("/api/videos").json()
    assert listing["total"] == 3 and {x["name"] for x in listing["videos"]} == {"kitchen.mp4", "garage.avi", "gone.mp4"}
    r = client.get("/api/videos/999")
    assert r.status_code == 404 and "no video with id 999" in r.json()["error"]["message"]
    assert client.get("/api/videos/999/file").status_code == 404


def test_file_full_and_ranges(client, library):
    vid = library["ids"]["kitchen.mp4"]
    data = (library["videos"] / "kitchen.mp4").read_bytes()
    size = len(data)
    url = f"/api/videos/{vid}/file"
    r = client.get(url)
    assert r.status_code == 200 and r.content == data
    assert r.headers["content-type"] == "video/mp4" and r.headers["accept-ranges"] == "bytes"
    assert int(r.headers["content-length"]) == size
    cases = {"bytes=0-99": (0, 99), "bytes=100-": (100, size - 1), "bytes=-50": (size - 50, size - 1),
             "bytes=10-10": (10, 10), f"bytes=1000-{size + 5000}": (1000, size - 1), "bytes=-999999999": (0, size - 1)}
    for header, (a, b) in cases.items():
        r = client.get(url, headers={"Range": header})
        assert r.status_code == 206, header
        assert r.headers["content-range"] == f"bytes {a}-{b}/{size}", header
        assert int(r.headers["content-length"]) == b - a + 1
        assert r.content == data[a:b + 1], header
    for header in (f"bytes={size}-", f"bytes={size + 10}-{size + 20}", "bytes=-0"):
        r = client.get(url, headers={"Range": header})
        assert r.status_code == 416, header
        assert r.headers["content-range"] == f"bytes */{size}"
    for header in ("bytes=5-2", "items=0-10", "bytes=0-1,5-9", "bytes=abc", "bytes=-"):
        r = client.get(url, headers={"Range": header})
        assert r.status_code == 200 and r.content == data, header
    etag = r.headers["etag"]
    assert client.get(url, headers={"Range": "bytes=0-9", "If-Range": etag}).status_code == 206
    assert client.get(url, headers={"Range": "bytes=0-9", "If-Range": '"stale"'}).status_code == 200
    h = client.head(url, headers={"Range": "bytes=0-9"})
    assert h.status_code == 206 and h.headers["content-length"] == "10" and h.content == b""
    avi = client.get(f"/api/videos/{library['ids']['garage.avi']}/file", headers={"Range": "bytes=0-3"})
    assert avi.status_code == 206 and avi.content == b"RIFF" and avi.headers["content-type"] == "video/x-msvideo"


def test_parse_range_unit():
    assert parse_range(None, 10) is None and parse_range("bytes=0-", 10) == (0, 9)
    assert parse_range("bytes=2-4", 10) == (2, 4) and parse_range(" BYTES = 3 - 5 ", 10) == (3, 5)


def test_missing_file(client, library):
    vid = library["ids"]["gone.mp4"]
    for path in (f"/api/videos/{vid}/file", f"/api/videos/{vid}/thumbnail?t=1"):
        r = client.get(path)
        assert r.status_code == 404 and r.headers["content-type"] == "application/json"
        assert r.json()["error"]["status"] == 404
        assert "file missing" in r.json()["error"]["message"] and "gone.mp4" in r.json()["error"]["message"]


def test_thumbnails(client, library):
    vid = library["ids"]["kitchen.mp4"]
    r = client.get(f"/api/videos/{vid}/thumbnail", params={"t": 5.5})
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg" and r.content[:2] == b"\xff\xd8"
    img = decode_jpeg(r.content)
    assert img.shape == (144, 192, 3)
    assert abs(float(img[:20, :20, 0].mean()) - 150) < 15  # red = 30 * second: the frame at 5.5 s
    first = decode_jpeg(client.get(f"/api/videos/{vid}/thumbnail", params={"t": 0}).content)
    assert float(first[:20, :20, 0].mean()) < 15
    hits = client.app.state.thumbnail_cache.hits
    assert client.get(f"/api/videos/{vid}/thumbnail", params={"t": 5.52}).content == r.content
    assert client.app.state.thumbnail_cache.hits == hits + 1
    past = client.get(f"/api/videos/{vid}/thumbnail", params={"t": 1000})  # clamped to the last frame
    assert past.status_code == 200 and decode_jpeg(past.content)[:20, :20, 0].mean() > 195
    avi = client.get(f"/api/videos/{library['ids']['garage.avi']}/thumbnail", params={"t": 2.0})
    assert avi.status_code == 200 and decode_jpeg(avi.content).shape == (120, 160, 3)  # never upscaled
    assert client.get(f"/api/videos/{vid}/thumbnail", params={"t": -1}).status_code == 422


# ----- traversal, static files, docs, health ------------------------------------------------

TRAVERSALS = [
    "/api/videos/../../etc/passwd", "/api/videos/..%2F..%2Fetc%2Fpasswd", "/api/videos/%2e%2e/%2e%2e/etc/passwd",
    "/api/videos/0/../../../etc/passwd", "/api/videos/0%2F..%2F..%2Fetc%2Fpasswd/file", "/api/videos/-1/file",
    "/api/videos/0x1/file", "/api/videos//etc/passwd/file", "/static/../server.py", "/static/..%2Fserver.py",
    "/static/%2e%2e%2fserver.py", "/static/%2e%2e/%2e%2e/pyproject.toml", "/static/..", "/static/", "/static",
    "/static/%2fetc%2fpasswd", "/static//etc/passwd", "/etc/passwd", "/api/videos/%00/file", "/api/videos/..%5c..%5cetc",
]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_traversal_testclient(client, path):
    r = client.get(path)
    if r.request.url.path == "/":  # httpx removed the dot segments itself: the home page
        assert r.text.startswith("<!doctype html>")
    else:
        assert r.status_code == 404, (path, r.status_code, r.text[:200])
    assert b"root:" not in r.content and b"def create_app" not in r.content


def test_traversal_raw_http(live):
    """The same against uvicorn, with the paths on the wire exactly as written."""
    _, port = live
    for path in TRAVERSALS:
        status, _, body = raw_get(port, path)
        assert status in (400, 404), (path, status)
        assert b"root:" not in body and b"def create_app" not in body


def test_host_header_check(live):
    _, port = live
    assert raw_get(port, "/healthz")[0] == 200
    status, _, body = raw_get(port, "/healthz", {"Host": "evil.example:80"})
    assert status == 400 and b"Host" in body


def test_ui_and_static(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in r.headers["content-security-policy"]
    html = r.text
    assert 'id="q"' in html and "/static/app.js" in html and "/static/style.css" in html
    for name, ctype in (("app.js", "text/javascript"), ("style.css", "text/css"), ("api.js", "text/javascript"),
                        ("api.html", "text/html")):
        s = client.get(f"/static/{name}")
        assert s.status_code == 200 and s.headers["content-type"].startswith(ctype)
        assert "http://" not in s.text and "https://" not in s.text  # nothing from other origins
        assert client.get(f"/static/{name}", headers={"If-None-Match": s.headers["etag"]}).status_code == 304
    assert "http://" not in html and "https://" not in html
    assert client.get("/static/nope.js").status_code == 404


def test_healthz_and_openapi(client, library):
    h = client.get("/healthz").json()
    assert h["status"] == "ok" and h["windows"] == len(library["index"]) and h["videos"] == 3
    spec = client.get("/openapi.json").json()
    for path in ("/api/search", "/api/videos/{video_id}", "/api/videos/{video_id}/file",
                 "/api/videos/{video_id}/thumbnail", "/healthz"):
        assert path in spec["paths"], path
    params = {p["name"]: p for p in spec["paths"]["/api/search"]["get"]["parameters"]}
    assert params["k"]["schema"]["maximum"] == MAX_K and params["q"]["schema"]["maxLength"] == MAX_QUERY_CHARS
    assert client.get("/docs").status_code == 200


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


# ----- the command line ---------------------------------------------------------------------


def test_cli_serve_help_and_missing_extra(monkeypatch, capsys, tmp_path, checkpoint):
    from milnce.cli import main

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

    from milnce.cli import main

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        assert main(["serve", "--index", str(tmp_path), "--port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
    assert main(["serve", "--index", str(tmp_path / "nope"), "--port", "0"]) == 2
    assert "index folder not found" in capsys.readouterr().err


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


def test_package_imports_without_fastapi():
    import subprocess

    code = ("import sys; sys.modules['fastapi'] = None; sys.modules['uvicorn'] = None\n"
            "import milnce, milnce.cli; milnce.cli.build_parser(); print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


# ----- the page in headless Chromium --------------------------------------------------------

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]


def wait_js(page, js: str, arg=None, timeout: float = 20.0):
    """Poll ``js`` (a function of ``arg``) from Python until it is truthy. Playwright's own
    ``wait_for_function`` polls with ``eval`` inside the page, which the UI's CSP forbids."""
    deadline = time.monotonic() + timeout
    while True:
        value = page.evaluate(js, arg)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {js}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    pw = sync_api.sync_playwright().start()
    try:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
    except Exception as exc:  # noqa: BLE001
        pw.stop()
        pytest.skip(f"Chromium did not start under playwright: {exc}")
    yield b
    b.close()
    pw.stop()


def test_browser_search_and_play(browser, live, library, tmp_path):
    base, port = live
    k = 50
    # single windows (merge=false, from the address like a shared link): moments start all over the videos
    expected = json.loads(raw_get(port, f"/api/search?q=cut+a+tomato&k={k}&merge=false")[2])["results"]
    target = next(i for i, m in enumerate(expected) if m["name"] == "kitchen.mp4" and m["start"] >= 1.0)
    start = expected[target]["start"]
    missing = next(i for i, m in enumerate(expected) if m["name"] == "gone.mp4")
    avi = next(i for i, m in enumerate(expected) if m["name"] == "garage.avi")

    page = browser.new_page(viewport={"width": 1280, "height": 860})
    problems: list[str] = []
    page.on("console", lambda msg: problems.append(f"console {msg.type}: {msg.text}") if msg.type == "error" else None)
    page.on("pageerror", lambda err: problems.append(f"page error: {err}"))
    page.on("request", lambda req: req.url.startswith((base, "data:")) or problems.append(f"foreign request {req.url}"))
    try:
        page.goto(base + "/?merge=false")
        wait_js(page, "() => document.getElementById('index-info').textContent.includes('windows')")
        wait_js(page, "() => document.body.dataset.ready === 'true'")  # /api/config answered
        assert page.input_value("#k") == "10"  # the API's default
        page.select_option("#k", str(k))
        page.fill("#q", "cut a tomato")
        page.press("#q", "Enter")
        page.wait_for_selector(".result")
        assert page.locator(".result").count() == len(expected)
        assert page.locator(".result").first.locator(".name").text_content() == expected[0]["name"]
        assert "q=cut+a+tomato" in page.url and "merge=false" in page.url
        # the first thumbnails of existing files load (JPEGs from the server)
        wait_js(page, "() => [...document.querySelectorAll('.result:not(.missing) img')].slice(0, 4)"
                ".every(i => i.complete && i.naturalWidth > 0)")
        assert page.locator(f'.result[data-index="{missing}"] .badge.bad').text_content() == "file missing"

        assert page.evaluate("() => document.createElement('video').canPlayType('video/mp4; codecs=\"avc1.42E01E\"')"), \
            "this Chromium cannot play H.264 (a build without proprietary codecs): Debian's package can"
        page.click(f'.result[data-index="{target}"]')
        wait_js(page, "start => { const v = document.getElementById('video');"
                " return v.readyState >= 2 && v.currentTime >= start - 0.05 && v.currentTime < start + 3; }", start)
        t = page.evaluate("() => document.getElementById('video').currentTime")
        assert start - 0.05 <= t < start + 3
        wait_js(page, "start => document.getElementById('video').currentTime > start + 0.3", start)  # it plays
        assert page.locator("#player-title").text_content() == "kitchen.mp4"
        # the score curve of the video for the query is drawn, one point per window, and the
        # moment is marked on the timeline under the video
        kitchen = library["ids"]["kitchen.mp4"]
        wait_js(page, "() => !document.getElementById('timeline').hidden && document.querySelector('#curve polyline')")
        points = page.evaluate("() => document.querySelector('#curve polyline').getAttribute('points').split(' ').length")
        assert points == library["index"].video(kitchen).num_windows
        assert "cut a tomato" in page.locator("#timeline-legend").text_content()
        duration = page.evaluate("() => document.getElementById('video').duration")
        left, width = page.evaluate("() => { const b = document.getElementById('moment-band').getBoundingClientRect(),"
                                    " t = document.getElementById('timeline').getBoundingClientRect();"
                                    " return [(b.left - t.left) / t.width, b.width / t.width]; }")
        end = expected[target]["end"]
        assert left == pytest.approx(start / duration, abs=0.02)
        assert width == pytest.approx((end - start) / duration, abs=0.02)
        # playback stops at the end of the moment
        wait_js(page, "end => { const v = document.getElementById('video'); return v.paused && v.currentTime >= end - 0.1; }",
                end)
        assert page.evaluate("() => document.getElementById('video').currentTime") < end + 0.5
        assert "End of the moment" in page.locator("#player-note").text_content()
        shot = Path(os.environ.get("MILNCE_SCREENSHOT_DIR", tmp_path)) / "milnce_serve.png"
        page.screenshot(path=str(shot))
        assert shot.stat().st_size > 10_000
        # another moment of the same video: the player seeks there without reloading the file
        other = next(i for i, m in enumerate(expected) if m["name"] == "kitchen.mp4" and abs(m["start"] - start) > 2)
        page.click(f'.result[data-index="{other}"]')
        wait_js(page, "s => { const v = document.getElementById('video'); return Math.abs(v.currentTime - s) < 1; }",
                expected[other]["start"])

        # a second search: the caption shows the moment's score for the new query, not the old one
        again = json.loads(raw_get(port, f"/api/search?q=pour+water&k={k}&merge=false")[2])["results"]
        mine = next(m for m in again if m["video_id"] == expected[other]["video_id"] and m["start"] == expected[other]["start"])
        page.fill("#q", "pour water")
        page.press("#q", "Enter")
        wait_js(page, "s => document.getElementById('player-meta').textContent.includes(s)", f"score {mine['score']:.3f}")
        assert page.locator("#player-title").text_content() == "kitchen.mp4"
        wait_js(page, "() => document.getElementById('timeline-legend').textContent.includes('pour water')")
        # one per video: the status counts videos
        page.check("#by-video")
        wait_js(page, "() => /^3 videos for/.test(document.getElementById('status').textContent)")
        assert page.locator(".result").count() == 3
        page.uncheck("#by-video")
        wait_js(page, f"() => document.querySelectorAll('.result').length === {len(again)}")
        # more like this: query by example from a result
        page.locator(".item .like").first.click()
        wait_js(page, "() => document.getElementById('status').textContent.includes(' like ')")
        assert "like=" in page.url and page.locator(".result").count() > 0
        # back to the first query: the same list as before
        page.fill("#q", "cut a tomato")
        page.press("#q", "Enter")
        wait_js(page, f"() => document.querySelectorAll('.result').length === {len(expected)}"
                " && document.getElementById('status').textContent.includes('cut a tomato')")

        page.click(f'.result[data-index="{missing}"]')
        assert "File missing" in page.locator("#player-note").text_content()
        assert page.locator("#video").is_hidden()
        page.click(f'.result[data-index="{avi}"]')
        assert "cannot play AVI" in page.locator("#player-note").text_content()
        wait_js(page, "() => document.getElementById('still').naturalWidth > 0")

        page.fill("#q", "zzyzx")
        page.press("#q", "Enter")
        wait_js(page, "() => document.getElementById('status').textContent.includes('vocabulary')")
        assert page.locator(".result").count() == 0

        page.goto(base + "/static/api.html")  # the offline API reference renders openapi.json
        wait_js(page, "() => document.querySelectorAll('.endpoint').length >= 5")
        assert "/api/search" in page.locator("#reference").text_content()
    finally:
        page.close()
    assert not problems, problems


@pytest.mark.parametrize("width", [1300, 1000])
def test_browser_score_line_not_under_more_like_this(browser, live, width):
    """Issue 15: at 1300 px the "percentile" text was hidden under the "More like this" button."""
    base, _ = live
    page = browser.new_page(viewport={"width": width, "height": 860})
    try:
        page.goto(base + "/?q=cut+a+tomato&k=20")
        page.wait_for_selector(".result .score")
        boxes = page.evaluate("""() => [...document.querySelectorAll('.item')].map(li => {
            const r = (s) => { const b = li.querySelector(s).getBoundingClientRect();
                               return [b.left, b.top, b.right, b.bottom]; };
            return {score: r('.score'), name: r('.name'), like: r('.like')};
        })""")
        assert boxes
        for b in boxes:
            for what in ("score", "name"):
                l1, t1, r1, b1 = b[what]
                l2, t2, r2, b2 = b["like"]
                assert r1 <= l2 or r2 <= l1 or b1 <= t2 or b2 <= t1, (what, b)
        page.screenshot(path=str(Path(os.environ.get("MILNCE_UI_SHOTS", "/tmp")) / f"milnce-ui-{width}.png"))
    finally:
        page.close()
