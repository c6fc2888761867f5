"""``milnce.server.multi``: Several indexes behind one server."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from milnce.server import create_app  # noqa: E402


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
