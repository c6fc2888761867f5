"""The web page (``milnce/static/app.js``) in headless Chromium through playwright."""

from __future__ import annotations

import json
import os
import time
import urllib.parse
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from milnce.server import create_app  # noqa: E402
from milnce.server.service import SearchService  # noqa: E402
from server_fixtures import raw_get, serving  # noqa: E402


@pytest.mark.slow  # Chromium (about 10 s on 2 idle cores with the other page tests)
def test_browser_index_picker(three, model, browser):
    """In Chromium: the picker lists "all indexes" and each index; picking one searches only it."""
    import json
    import urllib.request

    _, ix = three
    with serving(create_app({"a": ix["a"], "b": ix["b"]}, model)) as port:
        base = f"http://127.0.0.1:{port}"
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.goto(base + "/?q=cut+tomato&k=20")
        wait_js(page, "() => document.querySelectorAll('.result').length === 20")
        wait_js(page, "() => document.getElementById('index-pick').options.length === 3")
        assert page.is_visible("#index-pick")
        page.select_option("#index-pick", "b")
        want = json.loads(urllib.request.urlopen(f"{base}/api/search?q=cut+tomato&k=20&index=b").read())["results"]
        wait_js(page, "() => location.search.includes('index=b')")
        wait_js(page, "want => JSON.stringify([...document.querySelectorAll('.result .name')]"
                ".map(e => e.textContent)) === want", json.dumps([m["name"] for m in want], separators=(",", ":")))
        assert {m["index"] for m in want} == {"b"}
        assert not errors
        page.close()


# ----- the page in headless Chromium --------------------------------------------------------

CHROMIUM = os.environ.get("MILNCE_TEST_CHROMIUM", "/usr/bin/chromium")

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


@pytest.mark.slow
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


@pytest.mark.slow
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


def test_page_shows_the_model():

    import milnce.server

    app_js = (Path(milnce.server.__file__).parent.parent / "static" / "app.js").read_text()
    assert "model ${h.model}" in app_js


@pytest.mark.slow
def test_browser_filters_negatives_more_and_clip(wire_lib, browser):
    """In Chromium: a shared link with -term and filters, "More results" and the clip link."""
    import json
    import urllib.request

    with serving(create_app(wire_lib["index"], wire_lib["model"])) as port:
        base = f"http://127.0.0.1:{port}"
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
        page.close()


# ----- search by an uploaded clip, cues and modes (the like page) --------------------------

HOSTILE = '<img src=x onerror="window.__pwned = 1"> now add salt'
EMOJI = "\U0001f9c2 salt, then pepper"  # a character outside the BMP before the match: 2 UTF-16 units


@pytest.fixture(scope="module")
def site(tmp_path_factory, scene_lib):
    """The scene library served (Host check on), and a still of ``green.mp4`` to upload."""
    import av

    root = tmp_path_factory.mktemp("likepage")
    with av.open(str(scene_lib["vids"] / "green.mp4")) as c:
        frame = next(iter(c.decode(video=0)))
    frame.to_image().save(root / "shot.png")
    with serving(create_app(scene_lib["index"], scene_lib["model"], allowed_hosts=["127.0.0.1"])) as port:
        yield {"base": f"http://127.0.0.1:{port}", "png": root / "shot.png"}


@pytest.fixture()
def with_cues(monkeypatch):
    """Searches for words with "red" in them answer with cues (hostile text, code-point offsets)
    and the transcript fields; other searches answer as today (no cues)."""
    real = SearchService.search

    def search(self, text, like, k, merge, by_video, **kw):  # type: ignore[no-untyped-def]
        body = real(self, text, like, k, merge, by_video, **kw)
        if "red" in text:
            body["mode"] = "hybrid"
            for m in body["results"]:
                salt = HOSTILE.index("salt")
                m["cues"] = [{"start": m["start"], "end": m["end"], "text": HOSTILE, "lang": "en",
                              "matches": [[salt, salt + 4]]},
                             {"start": m["end"], "end": m["end"] + 1, "text": EMOJI, "lang": None, "matches": [[2, 6]]}]
                m["visual_score"], m["speech_score"] = 0.25, 0.75
        return body

    monkeypatch.setattr(SearchService, "search", search)


def open_page(browser, base: str):  # noqa: F811 - browser: the fixture
    page = browser.new_page(viewport={"width": 1280, "height": 860})
    problems: list[str] = []
    page.on("console", lambda msg: problems.append(f"console {msg.type}: {msg.text}") if msg.type == "error" else None)
    page.on("pageerror", lambda err: problems.append(f"page error: {err}"))
    sent: list[tuple[str, str]] = []
    page.on("request", lambda req: sent.append((req.method, req.url)))
    page.goto(base + "/")
    wait_js(page, "() => document.body.dataset.ready === 'true'")
    return page, problems, sent


def params_of(url: str) -> dict[str, list[str]]:
    return urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)


def test_cues_are_text_and_matches_are_marked(browser, site, with_cues):  # noqa: F811
    page, problems, sent = open_page(browser, site["base"])
    try:
        page.fill("#q", "red square")
        page.press("#q", "Enter")
        page.wait_for_selector(".cues")
        first = page.locator(".item").first
        texts = first.locator(".cue-text").all_text_contents()
        assert texts == [HOSTILE, EMOJI]  # shown as text, exactly
        assert page.evaluate("() => document.querySelectorAll('.results img[src=\"x\"], .cues img').length") == 0
        assert page.evaluate("() => window.__pwned") is None
        assert first.locator("mark").all_text_contents() == ["salt", "salt"]  # code points, not UTF-16 units
        assert first.locator(".cue-lang").all_text_contents() == ["en"]
        assert "speech 0.750" in first.locator(".score").text_content()
        assert "hybrid" in page.locator("#status").text_content()
        if os.environ.get("MILNCE_SCREENSHOT_DIR"):
            page.screenshot(path=str(Path(os.environ["MILNCE_SCREENSHOT_DIR"]) / "milnce_cues.png"))
        # a visual-only answer (no cues): the results show, without cue lines
        page.fill("#q", "green door")
        page.press("#q", "Enter")
        wait_js(page, "() => document.getElementById('status').textContent.includes('green door')")
        assert page.locator(".result").count() > 0 and page.locator(".cues").count() == 0
        assert not problems, problems
    finally:
        page.close()


def test_mode_switch_and_speech_weight_are_sent(browser, site):  # noqa: F811
    page, problems, sent = open_page(browser, site["base"])
    try:
        page.fill("#q", "green door")
        page.press("#q", "Enter")
        page.wait_for_selector(".result")
        got = params_of(next(u for m, u in reversed(sent) if "/api/search?" in u))
        assert "mode" not in got and "speech_weight" not in got  # auto: the server's default
        page.check('input[name="mode"][value="hybrid"]')
        wait_js(page, "() => document.getElementById('status').textContent.includes('green door')")
        page.evaluate("() => { const w = document.getElementById('speech-weight'); w.value = '0.8';"
                      " w.dispatchEvent(new Event('input')); w.dispatchEvent(new Event('change')); }")
        wait_js(page, "() => performance.getEntriesByType('resource').some(e => e.name.includes('speech_weight=0.8'))")
        got = params_of(next(u for m, u in reversed(sent) if "speech_weight" in u))
        assert got["mode"] == ["hybrid"] and got["speech_weight"] == ["0.8"]
        assert page.locator("#speech-weight-value").text_content() == "0.80"
        page.check('input[name="mode"][value="visual"]')
        wait_js(page, "() => document.getElementById('speech-weight').disabled")
        wait_js(page, "() => performance.getEntriesByType('resource').some(e => e.name.includes('mode=visual'))")
        got = params_of(next(u for m, u in reversed(sent) if "mode=visual" in u))
        assert "speech_weight" not in got
        assert not problems, problems
    finally:
        page.close()


def test_search_by_uploaded_clip(browser, site, tmp_path):  # noqa: F811
    page, problems, sent = open_page(browser, site["base"])
    try:
        page.check('input[name="mode"][value="visual"]')
        page.set_input_files("#like-file", str(site["png"]))
        wait_js(page, "() => document.getElementById('status').textContent.includes('like the image shot.png')")
        assert page.locator(".result").count() > 0
        method, url = next((m, u) for m, u in sent if "/api/search/like-upload" in u)
        assert method == "POST" and params_of(url)["mode"] == ["visual"]
        # a refused upload: the server's message, one line
        bad = Path(tmp_path) / "notes.mp4"
        bad.write_text("not a video\n" * 20)
        page.set_input_files("#like-file", str(bad))
        wait_js(page, "() => document.getElementById('status').textContent.startsWith('Search failed: 415')")
        assert not [p for p in problems if "415" not in p], problems
        shot = Path(os.environ.get("MILNCE_SCREENSHOT_DIR", tmp_path)) / "milnce_like_upload.png"
        page.screenshot(path=str(shot))
    finally:
        page.close()
