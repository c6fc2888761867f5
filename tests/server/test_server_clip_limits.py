"""The clip route's failures and disk bounds (issue 25 items 6, 7, 15): a failed cut is a 422 (not
a 500), finished clips waiting for slow clients are bounded in count and bytes (429 past them),
hold no folder in the temp directory, and are dropped after the send timeout; error bodies never
echo a huge input; the Host check refuses duplicates and bad ports."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import anyio
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from milnce.server import create_app  # noqa: E402
from milnce.video.cut import ClipLimits  # noqa: E402
from video_fixtures import make_video  # noqa: E402


@pytest.fixture(scope="module")
def lib(tmp_path_factory, model):
    from milnce.index import Index, build_index

    root = tmp_path_factory.mktemp("cliplim")
    vids = root / "videos"
    vids.mkdir()
    make_video(vids / "a.mp4", n=40, width=64, height=48)
    make_video(vids / "late.ts", rate=10, pts_ms=[1400 + 100 * i for i in range(40)], audio=True,
               options={"crf": "0", "preset": "ultrafast", "g": "10"})
    build_index([vids], root / "index", model, num_frames=8, size=32, stride=8, progress=False)
    index = Index.open(root / "index", model)
    ids = {Path(r.path).name: r.id for r in index.videos()}
    yield {"root": root, "index": index, "model": model, "ids": ids}
    index.close()


def test_a_failed_cut_is_422_not_500(lib):
    with TestClient(create_app(lib["index"], lib["model"]), raise_server_exceptions=False) as c:
        vid = lib["ids"]["a.mp4"]
        r = c.get(f"/api/videos/{vid}/clip", params={"start": 1, "end": 1.000001})  # no frame inside
        assert r.status_code == 422, r.text
        msg = r.json()["error"]["message"]
        assert "no video frames" in msg and "/proc/self/fd" not in msg


def test_clip_route_cuts_mpegts_at_the_indexed_times(lib, tmp_path):
    import av

    from video_fixtures import frame_index

    with TestClient(create_app(lib["index"], lib["model"])) as c:
        r = c.get(f"/api/videos/{lib['ids']['late.ts']}/clip", params={"start": 2, "end": 3})
        assert r.status_code == 200
        (tmp_path / "c.mp4").write_bytes(r.content)
        with av.open(str(tmp_path / "c.mp4")) as f:
            assert [frame_index(x.to_ndarray(format="rgb24")) for x in f.decode(video=0)] == list(range(20, 30))


def _request(path: str, query: str, headers: list[tuple[bytes, bytes]] | None = None) -> dict[str, Any]:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
            "path": path, "raw_path": path.encode(), "query_string": query.encode(), "root_path": "",
            "headers": headers or [(b"host", b"localhost")], "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 80)}


def test_unread_clips_are_bounded_and_dropped_after_the_send_timeout(lib, tmp_path, monkeypatch):
    """Clients that never read the body: the clips they hold count against max_files (429 past it),
    no milnce-clip-* folder stays in the temp directory, and after send_timeout the clips are gone."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    limits = ClipLimits(max_seconds=10, max_files=2, send_timeout=1.5)
    app = create_app(lib["index"], lib["model"], clip_limits=limits)
    vid = lib["ids"]["a.mp4"]
    statuses: list[int] = []
    stalled = anyio.Event()
    held_counts: list[int] = []

    async def one(stall: bool) -> None:
        async def receive() -> dict[str, Any]:
            await anyio.sleep(3600)  # the client says nothing more (and never disconnects)
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])
            elif stall and message.get("body"):
                stalled.set()
                await anyio.sleep(3600)  # a client that never reads the body

        await app(_request(f"/api/videos/{vid}/clip", "start=0&end=2"), receive, send)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(one, True)
            tg.start_soon(one, True)
            with anyio.fail_after(30):
                while len(statuses) < 2:
                    await anyio.sleep(0.05)
            held_counts.append(limits.files)
            assert not [n for n in os.listdir(tmp_path) if n.startswith("milnce-clip-")]
            await one(False)  # a third, while two are held: 429
            await anyio.sleep(2.5)  # past the send timeout: both dropped
            held_counts.append(limits.files)
            await one(False)

    anyio.run(main)
    assert statuses == [200, 200, 429, 200]
    assert held_counts == [2, 0] and limits.files == 0 and limits.bytes == 0
    assert not os.listdir(tmp_path)


def test_clip_bytes_are_bounded(lib):
    limits = ClipLimits(max_seconds=10, max_bytes=100)  # smaller than any clip
    with TestClient(create_app(lib["index"], lib["model"], clip_limits=limits)) as c:
        r = c.get(f"/api/videos/{lib['ids']['a.mp4']}/clip", params={"start": 0, "end": 1})
        assert r.status_code == 429 and r.headers["retry-after"] == "2" and "MiB" in r.json()["error"]["message"]
        assert limits.files == 0 and limits.bytes == 0


def _call(app: Any, scope: dict[str, Any]) -> tuple[int, bytes]:
    got: list[int] = []
    body: list[bytes] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            got.append(message["status"])
        else:
            body.append(message.get("body", b""))

    anyio.run(app, scope, receive, send)
    return got[0], b"".join(body)


def test_error_bodies_do_not_echo_huge_inputs(lib):
    app = create_app(lib["index"], lib["model"])
    status, body = _call(app, _request(f"/api/videos/{lib['ids']['a.mp4']}/clip", "start=" + "x" * 100_000 + "&end=1"))
    assert status == 422 and len(body) < 4000, len(body)
    assert b"start" in body and b"xxxx" in body  # what was wrong, and the start of the input


@pytest.mark.parametrize("hosts,status", [([b"127.0.0.1:8000"], 200), ([b"127.0.0.1:99999"], 400),
                                          ([b"127.0.0.1:0"], 400),
                                          ([b"localhost", b"evil.example"], 400),
                                          ([b"evil.example", b"localhost"], 400),
                                          ([b"localhost", b"localhost"], 400)])
def test_host_header_port_and_duplicates(lib, hosts, status):
    app = create_app(lib["index"], lib["model"], allowed_hosts=["localhost", "127.0.0.1"])
    assert _call(app, _request("/api/config", "", [(b"host", h) for h in hosts]))[0] == status


def test_serve_clip_options(capsys):
    from milnce import cli
    from milnce.commands.serve import _child_argv, _clip_limits

    args = cli.build_parser().parse_args(["serve", "--index", "ix", "--restart", "--clip-max-files", "3", "--clip-max-mb", "1.5",
                                          "--clip-send-timeout", "20"])
    lim = _clip_limits(args)
    assert (lim.max_files, lim.max_bytes, lim.send_timeout) == (3, int(1.5 * 2**20), 20.0)
    again = cli.build_parser().parse_args(_child_argv(args))  # the --restart child gets the same caps
    assert (again.clip_max_files, again.clip_max_mb, again.clip_send_timeout) == (3, 1.5, 20.0)
    assert cli.main(["serve", "--index", "ix", "--clip-max-mb", "nan"]) == 2
    assert "--clip-max-mb" in capsys.readouterr().err
