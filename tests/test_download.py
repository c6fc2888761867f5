"""``milnce.download``: Downloads into the cache."""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest

import milnce
import milnce.api
import milnce.download
import milnce.integrity
import milnce.weights
from conftest import VOCAB
from milnce.download import (
    CHECKSUMS_FILE,
    DownloadError,
    _record_checksum,
    _stat_entry,
    cache_dir,
    download,
    ensure_weights,
)
from milnce.weights import WeightsInfo

DATA = bytes(range(256)) * 400  # 102,400 bytes


class _Handler(BaseHTTPRequestHandler):
    """Serves ``server.files[name]`` at ``/<mode>/<name>``; the mode picks a misbehaviour."""

    server: _Server

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


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, bytes] = {}
        self.hits: list[tuple[str, str | None]] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.truncations_left = 0

    def handle_error(self, request: object, client_address: object) -> None:  # broken pipes: expected
        pass

    def url(self, mode: str, name: str = "") -> str:
        return f"http://127.0.0.1:{self.server_port}/{mode}/{name}"

    def count(self, name: str) -> int:
        return sum(1 for path, _ in self.hits if path.endswith("/" + name))


@pytest.fixture(scope="module")
def _server_module(checkpoint):
    srv = _Server()
    wpath, vpath = checkpoint
    srv.files.update({"data.bin": DATA, "s3d_howto100m.pth": wpath.read_bytes(), "s3d_dict.npy": vpath.read_bytes()})
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.stop.set()
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def server(_server_module):
    srv = _server_module
    snapshot = dict(srv.files)
    srv.hits.clear()
    srv.truncations_left = 0
    yield srv
    srv.files.clear()
    srv.files.update(snapshot)


@pytest.fixture
def skip_weights_check(monkeypatch):
    """Skip loading the checkpoint where the test is about something else (keeps the file fast)."""
    import milnce.download

    monkeypatch.setattr(milnce.download, "_check_weights", lambda path, info: None)


def _info(srv: _Server, mode: str = "good", **kw) -> WeightsInfo:
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
    return WeightsInfo(**fields)


def test_download_good(server, tmp_path):
    dest = download(server.url("good", "data.bin"), tmp_path / "out.bin", expected_size=len(DATA), progress=False)
    assert dest.read_bytes() == DATA
    assert not (tmp_path / "out.bin.part").exists()
    assert server.hits == [("/good/data.bin", None)]


def test_truncated_transfer_is_resumed(server, tmp_path):
    server.truncations_left = 2
    dest = download(server.url("trunc", "data.bin"), tmp_path / "out.bin", retries=3, backoff=0.01, progress=False)
    assert dest.read_bytes() == DATA
    ranges = [r for _, r in server.hits]
    assert ranges[0] is None and len(ranges) == 3
    assert ranges[1] == f"bytes={len(DATA) // 2}-"  # each retry resumes where the last stopped
    assert ranges[2] == f"bytes={len(DATA) // 2 + (len(DATA) - len(DATA) // 2) // 2}-"


def test_truncated_transfer_gives_up_after_retries_keeps_part(server, tmp_path):
    server.truncations_left = 10
    with pytest.raises(DownloadError, match="after 2 attempts.*closed after"):
        download(server.url("trunc", "data.bin"), tmp_path / "out.bin", retries=1, backoff=0.01, progress=False)
    assert not (tmp_path / "out.bin").exists()
    assert 0 < (tmp_path / "out.bin.part").stat().st_size < len(DATA)


def test_404_is_not_retried_and_explains(server, tmp_path):
    with pytest.raises(DownloadError) as err:
        download(server.url("missing", "data.bin"), tmp_path / "out.bin", retries=3, backoff=5, progress=False)
    msg = str(err.value)
    assert "not found at URL http://127.0.0.1" in msg and "404" in msg
    assert "mirror" in msg and "--weights/--vocab" in msg and "MILNCE_WEIGHTS/MILNCE_VOCAB" in msg
    assert len(server.hits) == 1
    assert not (tmp_path / "out.bin").exists()


def test_stalled_server_times_out(server, tmp_path):
    t0 = time.monotonic()
    with pytest.raises(DownloadError, match="timed out"):
        download(server.url("stall", "data.bin"), tmp_path / "out.bin", timeout=0.3, retries=1, backoff=0.01,
                 progress=False)
    assert time.monotonic() - t0 < 3
    assert len(server.hits) == 2
    assert not (tmp_path / "out.bin").exists()


def test_connection_refused_is_retried(tmp_path):
    srv = _Server()  # bound but never serving, then closed: nothing listens on the port
    url = srv.url("good", "data.bin")
    srv.server_close()
    with pytest.raises(DownloadError, match="after 3 attempts.*cannot connect"):
        download(url, tmp_path / "out.bin", retries=2, backoff=0.01, timeout=1, progress=False)


def test_resume_from_existing_part(server, tmp_path):
    (tmp_path / "out.bin.part").write_bytes(DATA[:1000])
    dest = download(server.url("good", "data.bin"), tmp_path / "out.bin", expected_size=len(DATA), progress=True)
    assert dest.read_bytes() == DATA
    assert server.hits == [("/good/data.bin", "bytes=1000-")]


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    (tmp_path / "out.bin.part").write_bytes(b"x" * 1000)  # would corrupt the file if appended to
    dest = download(server.url("norange", "data.bin"), tmp_path / "out.bin", progress=False)
    assert dest.read_bytes() == DATA
    assert server.hits == [("/norange/data.bin", "bytes=1000-")]


def test_complete_part_gets_416_and_is_kept(server, tmp_path):
    (tmp_path / "out.bin.part").write_bytes(DATA)
    dest = download(server.url("good", "data.bin"), tmp_path / "out.bin", expected_size=len(DATA), progress=False)
    assert dest.read_bytes() == DATA
    assert server.hits == [("/good/data.bin", f"bytes={len(DATA)}-")]


def test_size_mismatch_is_rejected(server, tmp_path):
    with pytest.raises(DownloadError, match="offers 102,400 bytes.*but 5,000 were expected"):
        download(server.url("good", "data.bin"), tmp_path / "out.bin", expected_size=5000, progress=False)
    assert not (tmp_path / "out.bin").exists()


def test_file_url_source(tmp_path):
    (tmp_path / "src.bin").write_bytes(DATA)
    (tmp_path / "out.bin.part").write_bytes(b"x" * 10)  # file: URLs ignore Range; restarted
    dest = download((tmp_path / "src.bin").as_uri(), tmp_path / "out.bin", expected_size=len(DATA), progress=False)
    assert dest.read_bytes() == DATA


# ----------------------------------------------------------------------------- ensure_weights()


def test_ensure_weights_downloads_once_and_records_sha256(server, monkeypatch):
    info = _info(server)
    w, v = ensure_weights(info, progress=False)
    assert w == cache_dir() / "s3d_howto100m.pth" and v == cache_dir() / "s3d_dict.npy"
    assert w.read_bytes() == server.files["s3d_howto100m.pth"]
    sums = json.loads((cache_dir() / CHECKSUMS_FILE).read_text())
    assert sums["s3d_howto100m.pth"]["sha256"] == milnce.weights.sha256_file(w)
    assert sums["s3d_dict.npy"]["sha256"] == milnce.weights.sha256_file(v)
    assert sums["s3d_howto100m.pth"]["url"] == info.url
    assert len(server.hits) == 2

    hashed = []
    real = milnce.weights.sha256_file
    monkeypatch.setattr(milnce.download, "sha256_file", lambda p: hashed.append(p) or real(p))
    assert ensure_weights(info, progress=False) == (w, v)
    assert len(server.hits) == 2  # nothing downloaded
    assert hashed == []  # unchanged size and mtime: no re-hashing
    os.utime(w)  # touched but identical: hashed once, then trusted again
    ensure_weights(info, progress=False)
    ensure_weights(info, progress=False)
    assert hashed == [w]


def test_corrupted_cache_file_is_detected(server, skip_weights_check):
    info = _info(server)
    w, _ = ensure_weights(info, progress=False)
    data = bytearray(w.read_bytes())
    data[len(data) // 2] ^= 0xFF
    st = w.stat()
    w.write_bytes(bytes(data))
    os.utime(w, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(DownloadError, match="changed since it was downloaded.*delete it and run `milnce download`"):
        ensure_weights(info, progress=False)
    assert w.exists()  # the user decides
    assert len(server.hits) == 2


def test_unrecorded_bad_file_in_cache_is_replaced(server, skip_weights_check, caplog):
    info = _info(server)
    (cache_dir() / "s3d_howto100m.pth").write_bytes(b"junk")
    with caplog.at_level("WARNING", logger="milnce"):
        w, _ = ensure_weights(info, progress=False)
    assert w.read_bytes() == server.files["s3d_howto100m.pth"]
    assert "downloading it again" in caplog.text  # logged (the CLI prints milnce.* warnings to stderr)


def test_weights_of_another_model_are_rejected_and_removed(server):
    # right size, but the word embedding has 301 rows while this "model" claims 299 words
    info = _info(server, vocab_words=len(VOCAB) - 1)
    with pytest.raises(DownloadError, match="another model"):
        ensure_weights(info, progress=False)
    assert not (cache_dir() / "s3d_howto100m.pth").exists()
    assert CHECKSUMS_FILE not in os.listdir(cache_dir())


def test_not_a_checkpoint_is_rejected_and_removed(server):
    junk = b"\0" * len(server.files["s3d_howto100m.pth"])
    server.files["junk.pth"] = junk
    info = _info(server, url=server.url("good", "junk.pth"))
    with pytest.raises(DownloadError, match="not a usable test_model checkpoint"):
        ensure_weights(info, progress=False)
    assert not (cache_dir() / "s3d_howto100m.pth").exists()


def test_wrong_vocab_length_is_rejected_and_removed(server, tmp_path):
    np.save(tmp_path / "v.npy", np.asarray(VOCAB[:-1], dtype=str), allow_pickle=False)
    server.files["s3d_dict.npy"] = (tmp_path / "v.npy").read_bytes()
    info = _info(server)
    with pytest.raises(DownloadError, match="has 299 words but test_model uses 300"):
        ensure_weights(info, progress=False)
    assert not (cache_dir() / "s3d_dict.npy").exists()
    assert (cache_dir() / "s3d_howto100m.pth").exists()  # the weights were fine


def test_mirror_is_used_when_primary_is_gone(server, skip_weights_check):
    info = _info(server, "missing", mirrors=(server.url("missing"), server.url("good")))
    w, v = ensure_weights(info, progress=False)
    assert v.read_bytes() == server.files["s3d_dict.npy"]
    # the mirror that repeats the primary URL is tried once
    assert [p for p, _ in server.hits][:2] == ["/missing/s3d_howto100m.pth", "/good/s3d_howto100m.pth"]


def test_all_sources_failing_lists_them(server):
    info = _info(server, "missing", mirrors=(server.url("missing", "mirror/"),))
    with pytest.raises(DownloadError, match="any of 2 sources.*not found at URL"):
        ensure_weights(info, progress=False)


def test_two_threads_share_one_download(server, skip_weights_check):
    info = _info(server)
    results, errors = [], []

    def run() -> None:
        try:
            results.append(ensure_weights(info, progress=False))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors and len(results) == 2
    assert server.count("s3d_howto100m.pth") == 1 and server.count("s3d_dict.npy") == 1


# ----------------------------------------------------------------------------- issue 10


def test_user_file_is_moved_aside_never_deleted(server, capsys):
    mine = b"my own copy of the weights, hand-copied" * 10
    (cache_dir() / "s3d_howto100m.pth").write_bytes(mine)
    info = _info(server, "missing")  # the download that follows fails
    with pytest.raises(DownloadError, match="your earlier file is kept as .*s3d_howto100m.pth.rejected"):
        ensure_weights(info, progress=False)
    err = capsys.readouterr().err
    assert "moved it to" in err and "never deletes" in err
    assert (cache_dir() / "s3d_howto100m.pth.rejected").read_bytes() == mine
    assert not (cache_dir() / "s3d_howto100m.pth").exists()
    # a second hand-copied file does not overwrite the first one moved aside
    (cache_dir() / "s3d_howto100m.pth").write_bytes(b"another" * 10)
    w, _ = ensure_weights(_info(server), progress=False)
    assert w.read_bytes() == server.files["s3d_howto100m.pth"]
    assert (cache_dir() / "s3d_howto100m.pth.rejected").read_bytes() == mine
    assert (cache_dir() / "s3d_howto100m.pth.rejected-2").read_bytes() == b"another" * 10


def test_retries_exhausted_message_has_the_same_hint(tmp_path):
    with pytest.raises(DownloadError) as exc:
        download("http://127.0.0.1:9/x.bin", tmp_path / "x.bin", retries=0, timeout=1, progress=False)
    assert "pass --weights" not in str(exc.value) and "MILNCE_WEIGHTS" in str(exc.value)

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


class _Handler_download_mirrors(BaseHTTPRequestHandler):
    """``/files/<name>``: plain files; ``/missing/...``: 404; ``/uc?id=ID``: a Drive-like download
    behind a confirmation page (``server.drive_style``: form, link or error); ``/download?...``: the
    file once confirmed with the right uuid."""

    server_download_mirrors: _Server_download_mirrors

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


class _Server_download_mirrors(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler_download_mirrors)
        self.files: dict[str, bytes] = {}
        self.drive: dict[str, bytes] = {}
        self.drive_style = "form"
        self.hits: list[str] = []
        self.lock = threading.Lock()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_port}/{path}"


@pytest.fixture(scope="module")
def _srv(checkpoint):
    srv = _Server_download_mirrors()
    wpath, vpath = checkpoint
    w, v = wpath.read_bytes(), vpath.read_bytes()
    srv.files.update({"s3d_howto100m.pth": w, "s3d_dict.npy": v})
    srv.drive.update({"WEIGHTSID": w, "VOCABID": v})
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def server_download_mirrors(_srv):
    _srv.hits.clear()
    _srv.drive_style = "form"
    return _srv


@pytest.fixture
def no_weights_check(monkeypatch):
    monkeypatch.setattr(milnce.download, "_check_weights", lambda path, info: None)


def _info_download_mirrors(srv: _Server_download_mirrors, **kw) -> WeightsInfo:
    fields = dict(name="test_model", url=srv.url("missing/s3d_howto100m.pth"), vocab_url=srv.url("missing/s3d_dict.npy"),
                  filename="s3d_howto100m.pth", vocab_filename="s3d_dict.npy",
                  num_bytes=len(srv.files["s3d_howto100m.pth"]), vocab_num_bytes=len(srv.files["s3d_dict.npy"]),
                  vocab_words=len(VOCAB))
    fields.update(kw)
    return WeightsInfo(**fields)  # type: ignore[arg-type]


def test_sources_tried_in_order_and_the_serving_one_is_logged(server_download_mirrors, monkeypatch, no_weights_check, caplog):
    monkeypatch.setenv("MILNCE_MIRRORS", server_download_mirrors.url("missing/env/"))
    info = _info_download_mirrors(server_download_mirrors, mirrors=(server_download_mirrors.url("missing/reg/"), server_download_mirrors.url("files/")))
    with caplog.at_level(logging.INFO, logger="milnce"):
        w, v = ensure_weights(info, progress=False, retries=0)
    assert w.read_bytes() == server_download_mirrors.files["s3d_howto100m.pth"]
    assert server_download_mirrors.hits[:4] == ["/missing/env/s3d_howto100m.pth", "/missing/s3d_howto100m.pth",
                               "/missing/reg/s3d_howto100m.pth", "/files/s3d_howto100m.pth"]
    assert f"s3d_howto100m.pth: downloaded from {server_download_mirrors.url('files/s3d_howto100m.pth')} (sha256 " in caplog.text
    record = json.loads((cache_dir() / CHECKSUMS_FILE).read_text())["s3d_howto100m.pth"]
    assert record["url"] == server_download_mirrors.url("files/s3d_howto100m.pth") and len(record["sha256"]) == 64


@pytest.mark.parametrize("style", ["form", "link"])
def test_drive_confirmation_page_is_followed(server_download_mirrors, style):
    server_download_mirrors.drive_style = style
    pair = f"{server_download_mirrors.url('uc?export=download&id=WEIGHTSID')} {server_download_mirrors.url('uc?export=download&id=VOCABID')}"
    w, v = ensure_weights(_info_download_mirrors(server_download_mirrors, mirrors=(pair,)), progress=False, retries=0)  # weights checked for real
    assert w.read_bytes() == server_download_mirrors.files["s3d_howto100m.pth"] and v.read_bytes() == server_download_mirrors.files["s3d_dict.npy"]
    if style == "form":
        assert any(h.startswith("/download?id=WEIGHTSID&export=download&confirm=t&uuid=u-WEIGHTSID") for h in server_download_mirrors.hits)


def test_drive_error_page_fails_over_to_the_next_source(server_download_mirrors, no_weights_check):
    server_download_mirrors.drive_style = "error"
    pair = f"{server_download_mirrors.url('uc?id=WEIGHTSID')} {server_download_mirrors.url('uc?id=VOCABID')}"
    info = _info_download_mirrors(server_download_mirrors, mirrors=(pair, server_download_mirrors.url("files/")))
    w, _ = ensure_weights(info, progress=False, retries=0)
    assert w.read_bytes() == server_download_mirrors.files["s3d_howto100m.pth"]
    with pytest.raises(DownloadError, match="answered a web page instead of the file"):
        info = _info_download_mirrors(server_download_mirrors, url=server_download_mirrors.url("uc?id=WEIGHTSID"),
                                      filename="other.pth")
        ensure_weights(info, progress=False)


def test_offline_load_checks_the_recorded_sha256(checkpoint):
    home = cache_dir()
    w, v = home / "s3d_howto100m.pth", home / "s3d_dict.npy"
    w.write_bytes(checkpoint[0].read_bytes())
    v.write_bytes(checkpoint[1].read_bytes())
    from milnce.weights import sha256_file

    for p in (w, v):
        _record_checksum(home, p.name, _stat_entry(p, sha256_file(p), "https://example.invalid/" + p.name))
    assert milnce.load_model(download=False).encode_text(["open door"]).shape == (1, 512)
    words = np.asarray(VOCAB, dtype=str)[::-1]  # a valid word list of the right size, but not the recorded one
    np.save(v, words, allow_pickle=False)
    with pytest.raises(DownloadError, match="changed since it was downloaded"):
        milnce.load_model(download=False)
    assert json.loads((home / CHECKSUMS_FILE).read_text())["s3d_dict.npy"]["url"]


# ---- from test_download_messages.py

ADVICE = "the original host has gone down at times; list a mirror in MILNCE_MIRRORS"
LOCAL = "or use local files: list a mirror in MILNCE_MIRRORS"


@pytest.fixture
def refused():
    """A 127.0.0.1 address whose port is bound but not listening: connections are refused."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/"
    sock.close()


def _info_download_messages(url: str, mirrors: tuple[str, ...] = ()) -> WeightsInfo:
    return WeightsInfo(name="test_model", url=url + "s3d_howto100m.pth", vocab_url=url + "s3d_dict.npy",
                       filename="s3d_howto100m.pth", vocab_filename="s3d_dict.npy", num_bytes=10,
                       vocab_num_bytes=10, vocab_words=3, mirrors=mirrors)


def test_one_url_reason_and_advice(tmp_path, refused):
    with pytest.raises(DownloadError) as err:
        download(refused + "w.pth", tmp_path / "w.pth", retries=0, timeout=2, progress=False)
    e = err.value
    assert e.reason.startswith(f"downloading {refused}w.pth failed after 1 attempt: cannot connect")
    assert e.advice.startswith("run again to resume (0 bytes kept), " + LOCAL)
    assert str(e) == f"{e.reason}; {e.advice}"
    missing = (tmp_path / "nowhere" / "w.pth").as_uri()
    with pytest.raises(DownloadError) as err:
        download(missing, tmp_path / "w2.pth", progress=False)
    assert err.value.reason == f"not found at URL {missing}" and err.value.advice.startswith(ADVICE)


def test_a_single_source_keeps_its_own_advice(refused):
    with pytest.raises(DownloadError) as err:
        ensure_weights(_info_download_messages(refused), progress=False, retries=0)
    msg = str(err.value)
    assert msg.startswith(f"downloading {refused}s3d_howto100m.pth failed after 1 attempt")
    assert msg.count("run again to resume") == 1 and msg.count(LOCAL) == 1 and "any of" not in msg


def test_several_sources_list_each_reason_and_advise_once(tmp_path, refused):
    folder = (tmp_path / "nowhere").as_uri() + "/"
    with pytest.raises(DownloadError) as err:
        ensure_weights(_info_download_messages(refused, mirrors=(folder,)), progress=False, retries=0)
    msg = str(err.value)
    assert msg.startswith("could not get s3d_howto100m.pth from any of 2 sources: "
                          f"downloading {refused}s3d_howto100m.pth failed after 1 attempt: cannot connect")
    assert f"; not found at URL {folder}s3d_howto100m.pth; {ADVICE}" in msg
    assert msg.count("list a mirror in MILNCE_MIRRORS") == 1 and "run again to resume" not in msg
    assert err.value.advice.startswith(ADVICE) and msg == f"{err.value.reason}; {err.value.advice}"
