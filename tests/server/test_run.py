"""``milnce.server.run``: Running the server."""

from __future__ import annotations

import threading

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from server_fixtures import TRAVERSALS, raw_get  # noqa: E402


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
