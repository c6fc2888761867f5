"""The search page in headless Chromium: search by an uploaded clip, the mode switch and the speech
weight (sent as ``mode`` / ``speech_weight``), and the ``cues`` under each moment: cue text is
shown as text (a hostile ``<img onerror>`` stays text), matched words are marked by code-point
offsets, and a page without cues (visual-only answers) still works. The cues are injected with a
wrapper around ``SearchService.search`` (the transcript feature is not needed here).

Needs ``/usr/bin/chromium`` and the ``playwright`` package (skipped without them, as
``tests/test_server.py``'s browser test)."""

from __future__ import annotations

import os
import urllib.parse
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from milnce.index import Index, build_index  # noqa: E402
from milnce.server import create_app  # noqa: E402
from milnce.server.service import SearchService  # noqa: E402
from milnce.windows import WindowSettings  # noqa: E402
from test_index import SMALL, make_video  # noqa: E402
from test_server import _serve_in_thread, browser, wait_js  # noqa: E402, F401 - browser: the fixture

HOSTILE = '<img src=x onerror="window.__pwned = 1"> now add salt'
EMOJI = "\U0001f9c2 salt, then pepper"  # a character outside the BMP before the match: 2 UTF-16 units


@pytest.fixture(scope="module")
def site(tmp_path_factory, model):
    root = tmp_path_factory.mktemp("likepage")
    vids = root / "videos"
    make_video(vids / "red.mp4", 3.0, (220, 30, 30), 1)
    make_video(vids / "green.mp4", 2.5, (30, 200, 40), 2)
    build_index([vids], root / "ix", model, progress=False, window=WindowSettings.for_model(model, **SMALL))
    import av

    with av.open(str(vids / "green.mp4")) as c:
        frame = next(iter(c.decode(video=0)))
    frame.to_image().save(root / "shot.png")
    index = Index.open(root / "ix", model)
    server, thread, sock, port = _serve_in_thread(create_app(index, model, allowed_hosts=["127.0.0.1"]))
    yield {"base": f"http://127.0.0.1:{port}", "png": root / "shot.png"}
    server.should_exit = True
    thread.join(10)
    sock.close()
    index.close()


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
