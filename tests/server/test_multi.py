"""Several indexes behind one server (issue 20): a merged search gives the same moments and scores
as one index built from all the videos (percentiles aside), qualified ids and URLs, pages, and
indexes that cannot be merged refused."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

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


def key(m):
    return (m["path"], m["start"], m["end"], m["score"])


def test_merged_equals_one_index_of_all_videos(three, model):
    _, ix = three
    with TestClient(create_app({"a": ix["a"], "b": ix["b"]}, model)) as multi, \
            TestClient(create_app(ix["all"], model)) as one:
        listing = multi.get("/api/indexes").json()
        assert listing["several"] and [x["name"] for x in listing["indexes"]] == ["a", "b"]
        for params in ({"q": "cut tomato"}, {"q": "cut tomato", "by_video": "true"},
                       {"q": "pour water -guitar"}, {"q": "cut tomato", "merge": "false"},
                       {"q": "cut tomato", "path_glob": "v1*"}):
            got = multi.get("/api/search", params={**params, "k": 30}).json()
            want = one.get("/api/search", params={**params, "k": 30}).json()
            assert [key(m) for m in got["results"]] == [key(m) for m in want["results"]], params
            assert {m["index"] for m in got["results"]} == {"a", "b"}
            # pages of the merged ranking
            pages = []
            for off in range(0, 30, 7):
                pages += multi.get("/api/search", params={**params, "k": 7, "offset": off}).json()["results"]
            assert [key(m) for m in pages[:30]] == [key(m) for m in got["results"]]
        # qualified ids and URLs: a result of b is served from b
        m = next(m for m in got["results"] if m["index"] == "b")
        assert m["file_url"] == f"/api/videos/{m['video_id']}/file?index=b"
        assert "&index=b" in m["thumbnail_url"] and m["like_prefix"] == "b:"
        assert multi.get(f"/api/videos/{m['video_id']}", params={"index": "b"}).json()["path"] == m["path"]
        r = multi.get(f"/api/videos/{m['video_id']}")
        assert r.status_code == 422 and "give index=NAME" in r.json()["error"]["message"]
        assert multi.get("/api/videos/1", params={"index": "nope"}).status_code == 404
        # one index only
        only_b = multi.get("/api/search", params={"q": "cut tomato", "k": 50, "index": "b"}).json()["results"]
        assert {x["index"] for x in only_b} == {"b"}
        # like across indexes: NAME:ID@SECONDS; the source video itself is left out
        like = f"b:{m['video_id']}@{m['start']}"
        liked = multi.get("/api/search", params={"like": like, "k": 10}).json()
        assert liked["like"]["index"] == "b" and liked["results"]
        assert not any(x["index"] == "b" and x["video_id"] == m["video_id"] for x in liked["results"])
        curve = multi.get(f"/api/videos/{m['video_id']}/curve", params={"like": like, "index": "b"}).json()
        assert len(curve["scores"]) == ix["b"].video(m["video_id"]).num_windows
        health = multi.get("/healthz").json()
        assert health["indexes"] == 2 and health["windows"] == len(ix["a"]) + len(ix["b"])


def test_single_index_keeps_unqualified_urls(three, model):
    _, ix = three
    with TestClient(create_app(ix["a"], model)) as c:
        m = c.get("/api/search", params={"q": "cut tomato"}).json()["results"][0]
        assert m["file_url"] == f"/api/videos/{m['video_id']}/file" and m["like_prefix"] == ""
        assert c.get(f"/api/videos/{m['video_id']}").status_code == 200
        assert c.get(f"/api/videos/{m['video_id']}", params={"index": "a"}).status_code == 200


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


def test_folder_of_indexes(three):
    from milnce.commands.serve import index_folders

    root, _ = three
    assert [Path(p).name for p in index_folders([str(root)])] == ["a", "all", "b"]


def test_browser_index_picker(three, model):
    """In Chromium: the picker lists "all indexes" and each index; picking one searches only it."""
    import json
    import urllib.request

    from tests.server.test_routes import CHROMIUM, CHROMIUM_ARGS, _serve_in_thread, wait_js

    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM}")
    sync_api = pytest.importorskip("playwright.sync_api")
    _, ix = three
    server, thread, sock, port = _serve_in_thread(create_app({"a": ix["a"], "b": ix["b"]}, model))
    base = f"http://127.0.0.1:{port}"
    pw = sync_api.sync_playwright().start()
    try:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
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
        browser.close()
    finally:
        pw.stop()
        server.should_exit = True
        thread.join(10)
        sock.close()
