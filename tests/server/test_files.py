"""``milnce.server.files``: Serving the indexed files."""

from __future__ import annotations

import os
import shutil
import socket
import struct
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import numpy as np
import pytest

from milnce.index import Index
from milnce.windows import WindowSettings

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from index_fixtures import make_index  # noqa: E402
from milnce.server import FILE_CHANGED, create_app, parse_range  # noqa: E402
from milnce.video.cut import ClipLimits  # noqa: E402
from server_fixtures import asgi_request, serving  # noqa: E402
from video_fixtures import make_video  # noqa: E402


def test_symlinked_parent_swapped_after_indexing_is_refused(tmp_path, index_client):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "v.mp4").write_bytes(b"A" * 64)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "v.mp4").write_bytes(b"S" * 64)  # same size
    st = os.stat(root / "sub" / "v.mp4")
    os.utime(outside / "v.mp4", ns=(st.st_atime_ns, st.st_mtime_ns))  # and same mtime
    make_index(tmp_path / "ix", [root / "sub" / "v.mp4"], roots=[root]).close()
    with Index.open(tmp_path / "ix") as idx, index_client(idx) as c:
        vid = idx.videos()[0].id
        assert c.get(f"/api/videos/{vid}/file").content == b"A" * 64
        os.rename(root / "sub", root / "sub.old")
        os.symlink(outside, root / "sub")  # the parent folder is now a link out of the root
        r = c.get(f"/api/videos/{vid}/file")
        assert r.status_code == 403 and b"S" not in r.content, r.text
        os.remove(root / "sub")
        os.symlink(root / "sub.old", root / "sub")  # a link inside the root: refused too (no links below a root)
        assert c.get(f"/api/videos/{vid}/file").status_code == 403


def test_file_full_and_ranges(client, library):
    vid = library["ids"]["kitchen.mp4"]
    data = (library["videos"] / "kitchen.mp4").read_bytes()
    size = len(data)
    url = f"/api/videos/{vid}/file"
    r = client.get(url)
    assert r.status_code == 200 and r.content == data
    assert r.headers["content-type"] == "video/mp4" and r.headers["accept-ranges"] == "bytes"
    assert int(r.headers["content-length"]) == size
    cases = {"bytes=0-99": (0, 99), "bytes=100-": (100, size - 1), "bytes=-50": (size - 50, size - 1),
             "bytes=10-10": (10, 10), f"bytes=1000-{size + 5000}": (1000, size - 1), "bytes=-999999999": (0, size - 1)}
    for header, (a, b) in cases.items():
        r = client.get(url, headers={"Range": header})
        assert r.status_code == 206, header
        assert r.headers["content-range"] == f"bytes {a}-{b}/{size}", header
        assert int(r.headers["content-length"]) == b - a + 1
        assert r.content == data[a:b + 1], header
    for header in (f"bytes={size}-", f"bytes={size + 10}-{size + 20}", "bytes=-0"):
        r = client.get(url, headers={"Range": header})
        assert r.status_code == 416, header
        assert r.headers["content-range"] == f"bytes */{size}"
    for header in ("bytes=5-2", "items=0-10", "bytes=0-1,5-9", "bytes=abc", "bytes=-"):
        r = client.get(url, headers={"Range": header})
        assert r.status_code == 200 and r.content == data, header
    etag = r.headers["etag"]
    assert client.get(url, headers={"Range": "bytes=0-9", "If-Range": etag}).status_code == 206
    assert client.get(url, headers={"Range": "bytes=0-9", "If-Range": '"stale"'}).status_code == 200
    h = client.head(url, headers={"Range": "bytes=0-9"})
    assert h.status_code == 206 and h.headers["content-length"] == "10" and h.content == b""
    avi = client.get(f"/api/videos/{library['ids']['garage.avi']}/file", headers={"Range": "bytes=0-3"})
    assert avi.status_code == 206 and avi.content == b"RIFF" and avi.headers["content-type"] == "video/x-msvideo"


def test_parse_range_unit():
    assert parse_range(None, 10) is None and parse_range("bytes=0-", 10) == (0, 9)
    assert parse_range("bytes=2-4", 10) == (2, 4) and parse_range(" BYTES = 3 - 5 ", 10) == (3, 5)


def test_missing_file(client, library):
    vid = library["ids"]["gone.mp4"]
    for path in (f"/api/videos/{vid}/file", f"/api/videos/{vid}/thumbnail?t=1"):
        r = client.get(path)
        assert r.status_code == 404 and r.headers["content-type"] == "application/json"
        assert r.json()["error"]["status"] == 404
        assert "file missing" in r.json()["error"]["message"] and "gone.mp4" in r.json()["error"]["message"]


@pytest.mark.slow
def test_unread_clips_are_bounded_and_dropped_after_the_send_timeout(clip_lib, tmp_path, monkeypatch):
    """Clients that never read the body: the clips they hold count against max_files (429 past it),
    no milnce-clip-* folder stays in the temp directory, and after send_timeout the clips are gone."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    limits = ClipLimits(max_seconds=10, max_files=2, send_timeout=1.5)
    app = create_app(clip_lib["index"], clip_lib["model"], clip_limits=limits)
    vid = clip_lib["ids"]["a.mp4"]
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

        await app(asgi_request(f"/api/videos/{vid}/clip", "start=0&end=2"), receive, send)

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


def test_clip_bytes_are_bounded(clip_lib):
    limits = ClipLimits(max_seconds=10, max_bytes=100)  # smaller than any clip
    with TestClient(create_app(clip_lib["index"], clip_lib["model"], clip_limits=limits)) as c:
        r = c.get(f"/api/videos/{clip_lib['ids']['a.mp4']}/clip", params={"start": 0, "end": 1})
        assert r.status_code == 429 and r.headers["retry-after"] == "2" and "MiB" in r.json()["error"]["message"]
        assert limits.files == 0 and limits.bytes == 0


def raw_request(port: int, path: str, extra: bytes = b"") -> tuple[int, bytes]:
    """GET with header bytes sent exactly as given; (status, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
        c.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n".encode() + extra + b"\r\n")
        data = b""
        while chunk := c.recv(1 << 16):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


class swapped:
    """Move the indexed file aside for the block (its inode, so its mtime, comes back after)."""

    def __init__(self, path: Path) -> None:
        self.path, self.aside = path, path.with_name(path.name + ".aside")

    def __enter__(self) -> Path:
        os.replace(self.path, self.aside)
        return self.aside

    def __exit__(self, *exc) -> None:
        if self.path.is_symlink() or self.path.exists():
            self.path.unlink()
        os.replace(self.aside, self.path)


def assert_changed(r) -> None:
    assert r.status_code == 409, (r.status_code, r.content[:200])
    err = r.json()["error"]
    assert err["status"] == 409 and FILE_CHANGED in err["message"]


# ----- serve only the indexed file --------------------------------------------------------


def test_symlink_to_another_file_is_refused(trust_client, trust_lib, tmp_path):
    vid = trust_lib["ids"]["a.mp4"]
    path = trust_lib["videos"] / "a.mp4"
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"SECRET " * 50)
    with swapped(path) as original:
        path.symlink_to(secret)
        for url in (f"/api/videos/{vid}/file", f"/api/videos/{vid}/thumbnail?t=1"):
            r = trust_client.get(url)
            assert_changed(r)
            assert b"SECRET" not in r.content
        # a crafted target with the indexed size and mtime but other bytes: the content hash says no
        st = original.stat()
        secret.write_bytes(b"S" * st.st_size)
        os.utime(secret, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert_changed(trust_client.get(f"/api/videos/{vid}/file"))
        # a link to the very file that was indexed (moved elsewhere): same content, served
        path.unlink()
        path.symlink_to(original)
        r = trust_client.get(f"/api/videos/{vid}/file")
        assert r.status_code == 200 and r.content == original.read_bytes()
    assert trust_client.get(f"/api/videos/{vid}/file").status_code == 200


def test_modified_or_special_file_is_refused(trust_client, trust_lib):
    vid = trust_lib["ids"]["b.mp4"]
    path = trust_lib["videos"] / "b.mp4"
    with swapped(path) as original:
        shutil.copy(original, path)  # same bytes, new mtime
        assert_changed(trust_client.get(f"/api/videos/{vid}/file"))
        assert trust_client.get(f"/api/videos/{vid}").json()["file_state"] == "changed"  # listings say so too
        res = trust_client.get("/api/search", params={"q": "cut", "k": 100, "merge": "false"}).json()["results"]
        assert {m["file_state"] for m in res if m["video_id"] == vid} == {"changed"}
        assert {m["file_state"] for m in res if m["video_id"] != vid} == {"ok"}
        os.utime(path, ns=(original.stat().st_atime_ns, original.stat().st_mtime_ns))
        assert trust_client.get(f"/api/videos/{vid}/file").status_code == 200  # same size and mtime: the same file
        with open(path, "r+b") as f:  # other size
            f.truncate(100)
        assert_changed(trust_client.get(f"/api/videos/{vid}/thumbnail?t=0.5"))
        path.unlink()
        os.mkfifo(path)  # a FIFO must not hang the server
        assert_changed(trust_client.get(f"/api/videos/{vid}/file"))
    r = trust_client.get(f"/api/videos/{vid}/file")
    assert r.status_code == 200 and r.content == path.read_bytes()


# ----- Range headers and descriptors ------------------------------------------------------


def test_parse_range_only_ascii_digits():
    for header in ("bytes=²-", "bytes=0-²", "bytes=-²", "bytes=١٠-", "bytes=０-５", "bytes=1_0-", "bytes=+5-"):
        assert parse_range(header, 1000) is None, header


def test_range_non_ascii_digits_are_ignored(trust_lib):
    """Over real HTTP (header bytes are latin-1): ``²³¹`` pass ``str.isdigit`` but ``int()``
    refuses them (was a 500); an invalid Range is ignored: the whole file."""
    vid = trust_lib["ids"]["a.mp4"]
    data = (trust_lib["videos"] / "a.mp4").read_bytes()
    with serving(create_app(trust_lib["index"], trust_lib["model"])) as port:
        for header in ("bytes=²-", "bytes=0-³", "bytes=-¹", "bytes=¹²-"):
            status, body = raw_request(port, f"/api/videos/{vid}/file", b"Range: " + header.encode("latin-1") + b"\r\n")
            assert (status, body) == (200, data), header


def test_range_huge_numbers(trust_client, trust_lib):
    vid = trust_lib["ids"]["a.mp4"]
    size = (trust_lib["videos"] / "a.mp4").stat().st_size
    r = trust_client.get(f"/api/videos/{vid}/file", headers={"Range": "bytes=" + "9" * 5000 + "-"})
    assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{size}"
    assert r.json()["error"]["status"] == 416
    r = trust_client.get(f"/api/videos/{vid}/file", headers={"Range": "bytes=10-" + "9" * 5000})
    assert r.status_code == 206 and r.headers["content-range"] == f"bytes 10-{size - 1}/{size}"


def _big_file_index(path: Path, folder: Path):
    """A real index holding one large (sparse) file as its only video (one window)."""

    st = path.stat()
    w = Index.create_for(folder, "synthetic", WindowSettings(), roots=[path.parent])
    emb = SimpleNamespace(starts=np.zeros(1), ends=np.ones(1), embeddings=np.ones((1, 512), np.float32), duration=60.0)
    w.add_video(str(path), emb, size=st.st_size, mtime=st.st_mtime, content_hash="")
    w.close()
    return Index.open(folder)


def _open_fds_to(path: Path) -> int:
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            n += os.readlink(f"/proc/self/fd/{fd}") == str(path)
        except OSError:
            pass
    return n


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_aborted_downloads_close_their_files(tmp_path, model):
    """20 clients start a 64 MB download, read 64 KB and hang up: every file handle closes."""
    big = tmp_path / "big.mp4"
    with open(big, "wb") as f:
        f.truncate(64 << 20)
    with serving(create_app(_big_file_index(big, tmp_path / "ix"), model)) as port:
        for _ in range(20):
            c = socket.socket()
            c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            c.connect(("127.0.0.1", port))
            c.sendall(f"GET /api/videos/1/file HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
            got = 0
            while got < 65536:
                chunk = c.recv(65536)
                assert chunk
                got += len(chunk)
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # hang up: RST
            c.close()
        deadline = time.monotonic() + 10
        while _open_fds_to(big) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _open_fds_to(big) == 0


def test_clip_refuses_changed_removed_and_linked_files_as_file_serving_does(tmp_path, model):
    from milnce.index import Index, build_index

    vids = tmp_path / "videos"
    vids.mkdir()
    for n in ("x.mp4", "y.mp4", "z.mp4"):
        make_video(vids / n, n=20, width=64, height=48)
    build_index([vids], tmp_path / "ix", model, window=WindowSettings.for_model(model, num_frames=8, size=32, stride=8), progress=False)
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


def test_clip_never_outside_the_collection_roots(tmp_path, model):
    """A crafted index naming /etc/passwd: the clip endpoint refuses it (403) as /file does."""

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
