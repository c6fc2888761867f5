"""``milnce.server.thumbs``: Thumbnails."""

from __future__ import annotations

import io

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")


def decode_jpeg(data: bytes) -> np.ndarray:
    import av

    with av.open(io.BytesIO(data)) as c:
        return next(c.decode(video=0)).to_ndarray(format="rgb24")


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
