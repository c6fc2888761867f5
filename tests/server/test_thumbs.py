"""``milnce.server.thumbs``: Thumbnails."""

from __future__ import annotations

import io
import shutil
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from milnce.windows import WindowSettings

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from milnce.server import create_app  # noqa: E402

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
    build_index([vids], idx_dir, model, progress=False, window=WindowSettings.for_model(model, num_frames=8, size=64, stride=8))
    (vids / "gone.mp4").unlink()
    index = Index.open(idx_dir, model)
    ids = {Path(r.path).name: r.id for r in index.videos()}
    yield {"index": index, "model": model, "ids": ids, "videos": vids, "index_dir": idx_dir}
    index.close()


@pytest.fixture(scope="module")
def client(library):
    with TestClient(create_app(library["index"], library["model"])) as c:
        yield c


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
