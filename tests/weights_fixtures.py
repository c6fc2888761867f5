"""Shared by the weights, download and mirror tests: published-format checkpoints served from a
local HTTP server on 127.0.0.1 (fixtures and helpers).

- ``weights_server``: ``/<mode>/<name>`` serves ``files[name]``, the mode picks a misbehaviour
  (``good``, ``missing``, ``norange``, ``stall``, ``trunc``); ``weights_info`` describes its checkpoint.
- ``mirror_server``: plain files under ``/files/`` and Google-Drive-like downloads behind a
  confirmation page under ``/uc``; ``mirror_info`` describes its checkpoint (primary URLs missing).

Both serve the conftest ``checkpoint`` and are started once a session; each test gets them reset."""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import torch

from conftest import VOCAB, random_state_dict
from milnce.model import S3D
from milnce.weights import WeightsInfo

PAYLOAD = bytes(range(256)) * 400  # 102,400 bytes, served as ``data.bin`` by ``weights_server``


class _LocalServer(ThreadingHTTPServer):
    """An HTTP server on a free port of 127.0.0.1 that records what it was asked for (``hits``)."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self.files: dict[str, bytes] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()

    def handle_error(self, request: object, client_address: object) -> None:  # broken pipes: expected
        pass


@contextmanager
def serving(srv: _LocalServer) -> Iterator[_LocalServer]:
    """Serve ``srv`` from a thread until the block ends (stalled answers are released then)."""
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.stop.set()
        srv.shutdown()
        srv.server_close()


# ----------------------------------------------------------------------------- weights_server


class _FlakyHandler(BaseHTTPRequestHandler):
    """Serves ``server.files[name]`` at ``/<mode>/<name>``; the mode picks a misbehaviour."""

    server: FlakyServer

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def do_GET(self) -> None:  # noqa: N802
        srv = self.server
        _, mode, name = self.path.split("/", 2)
        rng = self.headers.get("Range")
        with srv.lock:
            srv.hits.append((self.path, rng))
        body = srv.files.get(name)
        if mode == "missing" or body is None:
            self.send_error(404)
            return
        start = 0
        if rng and mode != "norange":
            start = int(rng.removeprefix("bytes=").rstrip("-"))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        chunk = body[start:]
        self.send_header("Content-Length", str(len(chunk)))
        self.end_headers()
        if mode == "stall":
            srv.stop.wait(10)  # headers, then nothing until teardown
            return
        if mode == "trunc":
            with srv.lock:
                srv.truncations_left -= 1
                cut = srv.truncations_left >= 0
            if cut:  # promise everything, send half, hang up
                self.wfile.write(chunk[: len(chunk) // 2])
                return
        self.wfile.write(chunk)


class FlakyServer(_LocalServer):
    """``files[name]`` at ``/<mode>/<name>``: ``good``, ``missing`` (404), ``norange`` (ignores Range),
    ``stall`` (headers, then silence), ``trunc`` (half the body, ``truncations_left`` times)."""

    def __init__(self) -> None:
        super().__init__(_FlakyHandler)
        self.hits: list[tuple[str, str | None]] = []
        self.truncations_left = 0

    def url(self, mode: str, name: str = "") -> str:
        return f"http://127.0.0.1:{self.server_port}/{mode}/{name}"

    def count(self, name: str) -> int:
        return sum(1 for path, _ in self.hits if path.endswith("/" + name))


@pytest.fixture(scope="session")
def _flaky_server(checkpoint) -> Iterator[FlakyServer]:
    wpath, vpath = checkpoint
    srv = FlakyServer()
    srv.files.update({"data.bin": PAYLOAD, "s3d_howto100m.pth": wpath.read_bytes(), "s3d_dict.npy": vpath.read_bytes()})
    with serving(srv):
        yield srv


@pytest.fixture
def weights_server(_flaky_server) -> Iterator[FlakyServer]:
    """The session's ``FlakyServer`` serving ``data.bin`` (``PAYLOAD``) and the conftest checkpoint,
    with no hits yet; the files a test changes are put back after it."""
    srv = _flaky_server
    snapshot = dict(srv.files)
    srv.hits.clear()
    srv.truncations_left = 0
    yield srv
    srv.files.clear()
    srv.files.update(snapshot)


def weights_info(srv: FlakyServer, mode: str = "good", **kw: Any) -> WeightsInfo:
    """A registry entry ``test_model`` for the checkpoint ``srv`` serves in ``mode``."""
    fields = dict(
        name="test_model",
        url=srv.url(mode, "s3d_howto100m.pth"),
        vocab_url=srv.url(mode, "s3d_dict.npy"),
        filename="s3d_howto100m.pth",
        vocab_filename="s3d_dict.npy",
        num_bytes=len(srv.files["s3d_howto100m.pth"]),
        vocab_num_bytes=len(srv.files["s3d_dict.npy"]),
        vocab_words=len(VOCAB),
    )
    fields.update(kw)
    return WeightsInfo(**fields)  # type: ignore[arg-type]


@pytest.fixture
def skip_weights_check(monkeypatch):
    """Skip loading the checkpoint where the test is about something else (keeps the test fast)."""
    import milnce.download

    monkeypatch.setattr(milnce.download, "_check_weights", lambda path, info: None)


# ----------------------------------------------------------------------------- mirror_server

FORM_PAGE = """<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head><body>
<p>Google Drive can't scan this file for viruses.</p>
<form id="download-form" action="{action}" method="get">
<input type="submit" id="uc-download-link" value="Download anyway"/>
<input type="hidden" name="id" value="{id}"><input type="hidden" name="export" value="download">
<input type="hidden" name="confirm" value="t"><input type="hidden" name="uuid" value="{uuid}">
</form></body></html>"""
LINK_PAGE = ('<html><body><a id="uc-download-link" href="/uc?export=download&amp;confirm={token}&amp;id={id}">'
             "Download anyway</a></body></html>")
ERROR_PAGE = "<html><body><p>Too many users have viewed or downloaded this file recently.</p></body></html>"


class _MirrorHandler(BaseHTTPRequestHandler):
    """``/files/<name>``: plain files; ``/missing/...``: 404; ``/uc?id=ID``: a Drive-like download
    behind a confirmation page (``server.drive_style``: form, link or error); ``/download?...``: the
    file once confirmed with the right uuid."""

    server: MirrorServer

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, code: int, body: bytes, ctype: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        srv = self.server
        parts = urlsplit(self.path)
        q = {k: v[0] for k, v in parse_qs(parts.query).items()}
        with srv.lock:
            srv.hits.append(self.path)
        if parts.path.startswith("/files/") and parts.path[7:] in srv.files:
            self._send(200, srv.files[parts.path[7:]], "application/octet-stream")
        elif parts.path == "/uc" and q.get("id") in srv.drive:
            if srv.drive_style == "link":
                if q.get("confirm") == "tok3n":
                    self._send(200, srv.drive[q["id"]], "application/octet-stream")
                else:
                    self._send(200, LINK_PAGE.format(token="tok3n", id=q["id"]).encode(), "text/html; charset=utf-8")
            elif srv.drive_style == "error":
                self._send(200, ERROR_PAGE.encode(), "text/html; charset=utf-8")
            else:
                page = FORM_PAGE.format(action=f"http://127.0.0.1:{srv.server_port}/download", id=q["id"],
                                        uuid="u-" + q["id"])
                self._send(200, page.encode(), "text/html; charset=utf-8")
        elif (parts.path == "/download" and q.get("id") in srv.drive and q.get("confirm") == "t"
              and q.get("uuid") == "u-" + q["id"] and q.get("export") == "download"):
            self._send(200, srv.drive[q["id"]], "application/octet-stream")
        else:
            self._send(404, b"not found", "text/plain")


class MirrorServer(_LocalServer):
    """Plain files at ``/files/<name>``, ``drive[ID]`` behind a Drive-like confirmation at ``/uc?id=ID``."""

    def __init__(self) -> None:
        super().__init__(_MirrorHandler)
        self.drive: dict[str, bytes] = {}
        self.drive_style = "form"
        self.hits: list[str] = []

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_port}/{path}"


@pytest.fixture(scope="session")
def _mirror_server(checkpoint) -> Iterator[MirrorServer]:
    wpath, vpath = checkpoint
    w, v = wpath.read_bytes(), vpath.read_bytes()
    srv = MirrorServer()
    srv.files.update({"s3d_howto100m.pth": w, "s3d_dict.npy": v})
    srv.drive.update({"WEIGHTSID": w, "VOCABID": v})
    with serving(srv):
        yield srv


@pytest.fixture
def mirror_server(_mirror_server) -> Iterator[MirrorServer]:
    """The session's ``MirrorServer`` serving the conftest checkpoint as ``/files/...`` and as Drive ids
    ``WEIGHTSID``/``VOCABID`` (form style), with no hits yet; what a test changes is put back after it."""
    srv = _mirror_server
    files, drive = dict(srv.files), dict(srv.drive)
    srv.hits.clear()
    srv.drive_style = "form"
    yield srv
    srv.files.clear()
    srv.files.update(files)
    srv.drive.clear()
    srv.drive.update(drive)


def mirror_info(srv: MirrorServer, **kw: Any) -> WeightsInfo:
    """A registry entry ``test_model`` whose primary URLs are missing on ``srv``."""
    fields = dict(name="test_model", url=srv.url("missing/s3d_howto100m.pth"), vocab_url=srv.url("missing/s3d_dict.npy"),
                  filename="s3d_howto100m.pth", vocab_filename="s3d_dict.npy",
                  num_bytes=len(srv.files["s3d_howto100m.pth"]), vocab_num_bytes=len(srv.files["s3d_dict.npy"]),
                  vocab_words=len(VOCAB))
    fields.update(kw)
    return WeightsInfo(**fields)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- CLI and networks


def offline_args(ckpt: tuple[Path, Path]) -> list[str]:
    """The CLI options that name ``(weights, vocab)`` and forbid downloads."""
    return ["--weights", str(ckpt[0]), "--vocab", str(ckpt[1]), "--no-download"]


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    """The captured stderr, asserted to be one ``milnce: error:`` line."""
    err = capsys.readouterr().err
    assert err.startswith("milnce: error:") and len(err.strip().splitlines()) == 1, err
    return err


@functools.cache
def _random_weights(space_to_depth: bool, seed: int) -> dict[str, torch.Tensor]:
    return random_state_dict(space_to_depth, seed=seed)


def random_weights(space_to_depth: bool = True, seed: int = 0) -> dict[str, torch.Tensor]:
    """``random_state_dict(space_to_depth, seed=seed)`` (conftest vocabulary), made once a session:
    each call gets its own copy of the tensors (about 0.1 s, where making them takes seconds)."""
    return {k: v.clone() for k, v in _random_weights(space_to_depth, seed).items()}


def random_net(space_to_depth: bool = True, seed: int = 0) -> S3D:
    """An ``S3D`` in eval mode with ``random_weights`` and the conftest vocabulary, its own copy (built
    on the meta device and given the tensors, as ``load_model`` does: no random init to overwrite)."""
    with torch.device("meta"):
        net = S3D(VOCAB, 512, space_to_depth=space_to_depth)
    net.load_state_dict(random_weights(space_to_depth, seed), strict=True, assign=True)
    return net.eval()
