"""``milnce.server.service``: The search service behind the web API."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from milnce.server import create_app  # noqa: E402


def test_only_one_result_passes_the_filter(two_video_index, model):
    from milnce.index import Index
    from milnce.index.filters import VideoFilter
    from milnce.server.service import SearchService

    with Index.open(two_video_index, model) as index:
        service = SearchService(index, model)
        out = service.search("cut", "", k=5, merge=True, by_video=True, video_filter=VideoFilter(path_glob="*.mp4"))
    assert len(out["results"]) == 1
    assert (out["message"] or "").startswith("Only 1 result passes the filter"), out["message"]


def test_warm_up(trust_lib, model, caplog):
    """The warm-up runs one search through the app (the Host check included) without failing."""
    for hosts in (None, ["127.0.0.1", "localhost"]):
        with caplog.at_level("WARNING", logger="milnce.server"):
            app = create_app(trust_lib["index"], model, warm_up=True, allowed_hosts=hosts)
        assert app.state.warmup_ms > 0 and len(app.state.query_cache) == 0
        assert "warm-up" not in caplog.text
    with TestClient(app, base_url="http://127.0.0.1") as c:  # the app still serves after it
        assert c.get("/api/search", params={"q": "cut"}).status_code == 200
