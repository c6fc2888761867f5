"""The JSON API of issue 20: filters, negative terms (``-term`` in ``q``), pagination and the clip
endpoint (length cap, busy, refusals exactly as file serving refuses)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from milnce.index.filters import VideoFilter  # noqa: E402
from milnce.server import create_app  # noqa: E402
from milnce.video.cut import ClipLimits  # noqa: E402
from video_fixtures import make_video  # noqa: E402


@pytest.fixture(scope="module")
def lib(tmp_path_factory, model):
    from milnce.index import Index, build_index

    root = tmp_path_factory.mktemp("wire")
    vids = root / "videos"
    (vids / "sub").mkdir(parents=True)
    make_video(vids / "a.mp4", n=40, width=96, height=64)
    make_video(vids / "sub" / "b.mp4", n=40, width=96, height=64, marker=True)
    make_video(vids / "c.mkv", n=30, width=96, height=64)
    build_index([vids], root / "index", model, num_frames=8, size=32, stride=8, progress=False)
    index = Index.open(root / "index", model)
    ids = {Path(r.path).name: r.id for r in index.videos()}
    yield {"root": root, "videos": vids, "index": index, "model": model, "ids": ids}
    index.close()


@pytest.fixture(scope="module")
def client(lib):
    with TestClient(create_app(lib["index"], lib["model"], clip_limits=ClipLimits(max_seconds=3.0))) as c:
        yield c


def keys(results):
    return [(m["video_id"], m["start"], m["end"], m["score"]) for m in results]


def test_filters_in_the_api(client, lib):
    vids = lib["videos"]
    r = client.get("/api/search", params={"q": "cut tomato", "k": 50, "under": str(vids / "sub")}).json()
    assert r["results"] and {m["video_id"] for m in r["results"]} == {lib["ids"]["b.mp4"]}
    assert r["filter"].startswith("under")
    r = client.get("/api/search", params={"q": "cut tomato", "k": 50, "path_glob": "*.mkv"}).json()
    assert {m["video_id"] for m in r["results"]} == {lib["ids"]["c.mkv"]}
    r = client.get("/api/search", params={"q": "cut tomato", "k": 50, "min_duration": 3.5}).json()
    assert {m["video_id"] for m in r["results"]} == {lib["ids"]["a.mp4"], lib["ids"]["b.mp4"]}
    # the same moments as the library's filtered search
    want = lib["index"].search("cut tomato", 50, video_filter=VideoFilter(duration_min=3.5))
    assert [(m["video_id"], m["start"]) for m in r["results"]] == [(m.video_id, m.start) for m in want]
    # no video matches: said so, no results, 200
    r = client.get("/api/search", params={"q": "cut tomato", "path_glob": "*.avi"}).json()
    assert r["results"] == [] and "no indexed video matches" in r["message"].lower()


@pytest.mark.parametrize("params, words", [
    ({"min_duration": 5, "max_duration": 1}, "impossible duration range"),
    ({"after": "2024-05-01", "before": "2024-01-01"}, "impossible date range"),
    ({"after": "soon"}, "is not a date"),
    ({"path_glob": "../*"}, "would leave the collection"),
    ({"under": "/etc"}, "outside the indexed collection"),
    ({"q": "-tomato"}, "nothing to search for"),
    ({"not": "qqqzzz"}, "cannot search for"),
    ({"offset": -1}, "offset"),
])
def test_bad_search_parameters_one_error_each(client, params, words):
    r = client.get("/api/search", params={"q": "cut tomato", **params})
    assert r.status_code == 422
    assert words in r.json()["error"]["message"]


def test_negative_terms_in_q_and_not(client, lib):
    index = lib["index"]
    base = client.get("/api/search", params={"q": "cut tomato", "k": 20}).json()
    r = client.get("/api/search", params={"q": 'cut tomato -"pour water" -guitar', "k": 20}).json()
    assert r["words"] == ["cut", "tomato"] and r["not"] == ["pour water", "guitar"] and r["not_weight"] == 0.5
    want = index.search("cut tomato", 20, negatives=["pour water", "guitar"])
    assert [(m["video_id"], m["start"], m["end"]) for m in r["results"]] == [(m.video_id, m.start, m.end) for m in want]
    np.testing.assert_allclose([m["score"] for m in r["results"]], [m.score for m in want], atol=1e-4)
    assert keys(r["results"]) != keys(base["results"])
    r2 = client.get("/api/search", params=[("q", "cut tomato"), ("not", "pour water"), ("not", "guitar"), ("k", "20")]).json()
    assert keys(r2["results"]) == keys(r["results"])


def test_pages_concatenated_equal_one_big_page(client):
    for extra in ({}, {"by_video": "true"}, {"q": "cut tomato -guitar"}):
        params = {"q": "cut tomato", **extra}
        big = client.get("/api/search", params={**params, "k": 24}).json()["results"]
        pages = []
        for off in range(0, 24, 5):
            pages += client.get("/api/search", params={**params, "k": 5, "offset": off}).json()["results"]
        assert keys(pages[:len(big)]) == keys(big)


def test_clip_endpoint(client, lib):
    import av

    vid = lib["ids"]["a.mp4"]
    r = client.get(f"/api/videos/{vid}/clip", params={"start": 0.5, "end": 2.5})
    assert r.status_code == 200 and r.headers["content-type"] == "video/mp4"
    assert "attachment" in r.headers["content-disposition"] and "a_" in r.headers["content-disposition"]
    out = lib["root"] / "got.mp4"
    out.write_bytes(r.content)
    with av.open(str(out)) as c:
        frames = sum(1 for _ in c.decode(video=0))
    assert abs(frames - 20) <= 1  # 2 s at 10 fps
    for params, status, words in (({"start": 2, "end": 1}, 422, "empty"),
                                  ({"start": 0, "end": 60}, 422, "outside the video"),
                                  ({"start": 0, "end": 3.9}, 422, "at most 3 s"),
                                  ({"start": 0}, 422, "end")):
        r = client.get(f"/api/videos/{vid}/clip", params=params)
        assert r.status_code == status and words in r.json()["error"]["message"]
    assert client.get("/api/videos/999/clip", params={"start": 0, "end": 1}).status_code == 404


def test_clip_busy_answers_429(lib):
    limits = ClipLimits(max_seconds=10, max_concurrent=1)
    with TestClient(create_app(lib["index"], lib["model"], clip_limits=limits)) as c:
        vid = lib["ids"]["a.mp4"]
        held = threading.Event()
        with limits.slot():
            held.set()
            r = c.get(f"/api/videos/{vid}/clip", params={"start": 0, "end": 1})
        assert r.status_code == 429 and r.headers.get("retry-after") == "2"
        assert "too many clips" in r.json()["error"]["message"]
        assert c.get(f"/api/videos/{vid}/clip", params={"start": 0, "end": 1}).status_code == 200


def test_clip_refuses_changed_removed_and_linked_files_as_file_serving_does(tmp_path, model):
    from milnce.index import Index, build_index

    vids = tmp_path / "videos"
    vids.mkdir()
    for n in ("x.mp4", "y.mp4", "z.mp4"):
        make_video(vids / n, n=20, width=64, height=48)
    build_index([vids], tmp_path / "ix", model, num_frames=8, size=32, stride=8, progress=False)
    with Index.open(tmp_path / "ix", model) as index, TestClient(create_app(index, model)) as c:
        ids = {Path(r.path).name: r.id for r in index.videos()}
        with open(vids / "x.mp4", "ab") as f:
            f.write(b"\0")  # changed
        (vids / "y.mp4").unlink()  # removed
        outside = tmp_path / "outside.mp4"
        (vids / "z.mp4").rename(outside)
        os.symlink(outside, vids / "z.mp4")  # a link out of the collection
        for name, status in (("x.mp4", 409), ("y.mp4", 404), ("z.mp4", 409)):
            f = c.get(f"/api/videos/{ids[name]}/file")
            r = c.get(f"/api/videos/{ids[name]}/clip", params={"start": 0, "end": 1})
            assert f.status_code == r.status_code == status, name
            assert r.json()["error"]["message"] == f.json()["error"]["message"]


def test_browser_filters_negatives_more_and_clip(lib):
    """In Chromium: a shared link with -term and filters, "More results" and the clip link."""
    import json
    import urllib.request

    from tests.server.test_routes import CHROMIUM, CHROMIUM_ARGS, _serve_in_thread, wait_js

    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM}")
    sync_api = pytest.importorskip("playwright.sync_api")
    server, thread, sock, port = _serve_in_thread(create_app(lib["index"], lib["model"]))
    base = f"http://127.0.0.1:{port}"
    pw = sync_api.sync_playwright().start()
    try:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        problems: list[str] = []
        page.on("pageerror", lambda err: problems.append(str(err)))
        api = json.loads(urllib.request.urlopen(f"{base}/api/search?q=cut+tomato+-guitar&merge=false&k=100").read())
        total = len(api["results"])
        assert total > 10
        page.goto(base + "/?q=cut+tomato+-guitar&merge=false&k=10")
        wait_js(page, "() => document.querySelectorAll('.result').length === 10")
        assert page.is_visible("#more")
        page.click("#more")
        wait_js(page, "n => document.querySelectorAll('.result').length === n", min(20, total))
        names = page.evaluate("() => [...document.querySelectorAll('.result .name')].map(e => e.textContent)")
        assert names == [m["name"] for m in api["results"][:len(names)]]
        # a filter typed in the page
        page.click("#filters summary")
        page.fill("#f-glob", "*.mkv")
        page.press("#q", "Enter")
        wait_js(page, "() => [...document.querySelectorAll('.result .name')].length > 0 && "
                "[...document.querySelectorAll('.result .name')].every(e => e.textContent === 'c.mkv')")
        assert "path_glob=*.mkv" in page.url.replace("%2A", "*")
        page.fill("#f-glob", "")
        page.press("#q", "Enter")
        wait_js(page, "() => [...document.querySelectorAll('.result .name')].some(e => e.textContent !== 'c.mkv')")
        # the player's "Download clip" link cuts the moment on the server
        page.click('.result[data-index="0"]')
        href = wait_js(page, "() => !document.getElementById('clip-link').hidden && "
                       "document.getElementById('clip-link').getAttribute('href')")
        assert "/clip?start=" in href
        with urllib.request.urlopen(base + href) as r:
            assert r.status == 200 and r.headers["Content-Type"] == "video/mp4" and len(r.read()) > 1000
        assert not problems
        browser.close()
    finally:
        pw.stop()
        server.should_exit = True
        thread.join(10)
        sock.close()


def test_clip_never_outside_the_collection_roots(tmp_path, model):
    """A crafted index naming /etc/passwd: the clip endpoint refuses it (403) as /file does."""
    from types import SimpleNamespace

    from milnce.index import Index
    from milnce.windows import WindowSettings

    (tmp_path / "videos").mkdir()
    ix = Index.create_for(tmp_path / "ix", model.weights_id, WindowSettings(fps=10.0, num_frames=8, size=32, stride=8),
                          roots=[tmp_path / "videos"])
    st = os.stat("/etc/passwd")
    starts = np.arange(4) * 0.8
    ix.add_video("/etc/passwd", SimpleNamespace(starts=starts, ends=starts + 0.8, duration=3.2,
                                                embeddings=np.ones((4, 512), np.float32)),
                 size=st.st_size, mtime=st.st_mtime, content_hash="")
    ix.close()
    with Index.open(tmp_path / "ix", model) as index, TestClient(create_app(index, model)) as c:
        vid = index.videos()[0].id
        f = c.get(f"/api/videos/{vid}/file")
        r = c.get(f"/api/videos/{vid}/clip", params={"start": 0, "end": 1})
        assert f.status_code == r.status_code == 403
        assert "outside" in r.json()["error"]["message"] and b"root:" not in r.content
