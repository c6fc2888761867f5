"""Weights sources: the user's mirrors, the registry's, their order, Google Drive's confirmation page,
and `milnce download --from` (all against a local HTTP server on 127.0.0.1)."""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest
import torch

import milnce.download
import milnce.weights
from conftest import VOCAB
from milnce.cli import main
from milnce.download import CHECKSUMS_FILE, DownloadError, cache_dir, ensure_weights, install_from
from milnce.mirrors import MIRRORS_FILE, MirrorError, confirm_url, download_url, sources
from milnce.weights import REGISTRY, WeightsInfo

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


class _Handler(BaseHTTPRequestHandler):
    """``/files/<name>``: plain files; ``/missing/...``: 404; ``/uc?id=ID``: a Drive-like download
    behind a confirmation page (``server.drive_style``: form, link or error); ``/download?...``: the
    file once confirmed with the right uuid."""

    server: _Server

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


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, bytes] = {}
        self.drive: dict[str, bytes] = {}
        self.drive_style = "form"
        self.hits: list[str] = []
        self.lock = threading.Lock()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_port}/{path}"


@pytest.fixture(scope="module")
def _srv(checkpoint):
    srv = _Server()
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
def server(_srv):
    _srv.hits.clear()
    _srv.drive_style = "form"
    return _srv


@pytest.fixture
def no_weights_check(monkeypatch):
    monkeypatch.setattr(milnce.download, "_check_weights", lambda path, info: None)


def _info(srv: _Server, **kw) -> WeightsInfo:
    fields = dict(name="test_model", url=srv.url("missing/s3d_howto100m.pth"), vocab_url=srv.url("missing/s3d_dict.npy"),
                  filename="s3d_howto100m.pth", vocab_filename="s3d_dict.npy",
                  num_bytes=len(srv.files["s3d_howto100m.pth"]), vocab_num_bytes=len(srv.files["s3d_dict.npy"]),
                  vocab_words=len(VOCAB))
    fields.update(kw)
    return WeightsInfo(**fields)  # type: ignore[arg-type]


def test_registry_lists_the_known_sources_in_order():
    urls = [s.weights_url for s in sources(REGISTRY["s3d_howto100m"])]
    assert urls == ["https://www.di.ens.fr/~miech/S3D_howto100m/s3d_howto100m.pth",
                    "https://drive.google.com/uc?export=download&id=1DN8t1feS0t5hYYTfXQfZd596Pu9yXJIr",
                    "https://www.rocq.inria.fr/cluster-willow/amiech/howto100m/s3d_howto100m.pth"]
    assert sources(REGISTRY["s3d_howto100m"])[1].vocab_url.endswith("id=1p_CMGppAQk3B0_Z0i1r2AN_D1FM3kUFW")


def test_env_then_file_then_registry(server, monkeypatch, tmp_path):
    monkeypatch.setenv("MILNCE_MIRRORS", f"{server.url('missing/a/')} ; {tmp_path / 'nowhere'}\n")
    (cache_dir() / MIRRORS_FILE).write_text(f"# my mirrors\n{server.url('missing/b/')}\n\n"
                                            f"{server.url('missing/w.pth')}  {server.url('missing/v.npy')}  # pair\n")
    info = _info(server, mirrors=(server.url("missing/c/"),))
    found = sources(info)
    assert [s.origin for s in found][:2] == ["$MILNCE_MIRRORS"] * 2
    assert found[1].weights_url == (tmp_path / "nowhere" / "s3d_howto100m.pth").as_uri()  # a path: file: URL
    assert [s.weights_url.rsplit("/", 2)[-2] for s in found] == ["a", "nowhere", "b", "missing", "missing", "c"]
    assert found[3].vocab_url.endswith("/missing/v.npy") and found[3].origin.endswith(MIRRORS_FILE)
    assert found[4].origin == "registry" and found[5].origin == "registry mirror"


def test_sources_tried_in_order_and_the_serving_one_is_logged(server, monkeypatch, no_weights_check, caplog):
    monkeypatch.setenv("MILNCE_MIRRORS", server.url("missing/env/"))
    info = _info(server, mirrors=(server.url("missing/reg/"), server.url("files/")))
    with caplog.at_level(logging.INFO, logger="milnce"):
        w, v = ensure_weights(info, progress=False, retries=0)
    assert w.read_bytes() == server.files["s3d_howto100m.pth"]
    assert server.hits[:4] == ["/missing/env/s3d_howto100m.pth", "/missing/s3d_howto100m.pth",
                               "/missing/reg/s3d_howto100m.pth", "/files/s3d_howto100m.pth"]
    assert f"s3d_howto100m.pth: downloaded from {server.url('files/s3d_howto100m.pth')} (sha256 " in caplog.text
    record = json.loads((cache_dir() / CHECKSUMS_FILE).read_text())["s3d_howto100m.pth"]
    assert record["url"] == server.url("files/s3d_howto100m.pth") and len(record["sha256"]) == 64


@pytest.mark.parametrize("style", ["form", "link"])
def test_drive_confirmation_page_is_followed(server, style):
    server.drive_style = style
    pair = f"{server.url('uc?export=download&id=WEIGHTSID')} {server.url('uc?export=download&id=VOCABID')}"
    w, v = ensure_weights(_info(server, mirrors=(pair,)), progress=False, retries=0)  # weights checked for real
    assert w.read_bytes() == server.files["s3d_howto100m.pth"] and v.read_bytes() == server.files["s3d_dict.npy"]
    if style == "form":
        assert any(h.startswith("/download?id=WEIGHTSID&export=download&confirm=t&uuid=u-WEIGHTSID") for h in server.hits)


def test_drive_error_page_fails_over_to_the_next_source(server, no_weights_check):
    server.drive_style = "error"
    pair = f"{server.url('uc?id=WEIGHTSID')} {server.url('uc?id=VOCABID')}"
    info = _info(server, mirrors=(pair, server.url("files/")))
    w, _ = ensure_weights(info, progress=False, retries=0)
    assert w.read_bytes() == server.files["s3d_howto100m.pth"]
    with pytest.raises(DownloadError, match="answered a web page instead of the file"):
        ensure_weights(_info(server, url=server.url("uc?id=WEIGHTSID"), filename="other.pth"), progress=False)


def test_drive_page_addresses_become_download_addresses():
    assert download_url("https://drive.google.com/file/d/AbC-1_x/view?usp=sharing") == \
        "https://drive.google.com/uc?export=download&id=AbC-1_x"
    assert download_url("https://drive.google.com/open?id=Q1") == "https://drive.google.com/uc?export=download&id=Q1"
    assert confirm_url(ERROR_PAGE, "https://x/") is None
    # a page cannot send the download to another scheme
    assert confirm_url('<a href="file:///etc/passwd?confirm=1">x</a>', "https://x/") is None


def test_bad_mirror_entry_is_one_line(server, monkeypatch, capsys):
    monkeypatch.setenv("MILNCE_MIRRORS", "http://a/w.pth http://a/v.npy http://a/extra")
    with pytest.raises(MirrorError, match="not one folder URL or two file URLs"):
        sources(_info(server))
    monkeypatch.setitem(milnce.weights.REGISTRY, "s3d_howto100m", _info(server, name="s3d_howto100m"))
    assert main(["download", "--quiet"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_download_from_files_checks_and_installs(server, checkpoint, monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(milnce.weights.REGISTRY, "s3d_howto100m", _info(server, name="s3d_howto100m"))
    wpath, vpath = checkpoint
    assert main(["download", "--from", str(wpath), "--from", str(vpath)]) == 0
    out = capsys.readouterr().out
    assert out.count("verified: ") == 2
    assert (cache_dir() / "s3d_howto100m.pth").read_bytes() == wpath.read_bytes()
    record = json.loads((cache_dir() / CHECKSUMS_FILE).read_text())
    assert record["s3d_dict.npy"]["from"] == str(vpath) and len(record["s3d_howto100m.pth"]["sha256"]) == 64
    # now the published-weights path finds them without any download
    server.hits.clear()
    ensure_weights(milnce.weights.REGISTRY["s3d_howto100m"], progress=False)
    assert server.hits == []


def test_download_from_refuses_pickled_code_and_wrong_sizes(server, monkeypatch, tmp_path, capsys):
    evil = tmp_path / "s3d_howto100m.pth"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "payload": threading.Lock}, evil)  # a pickled global
    info = _info(server, num_bytes=evil.stat().st_size)
    with pytest.raises(DownloadError, match="pickled Python objects"):
        install_from(info, str(evil), progress=False)
    assert not (cache_dir() / "s3d_howto100m.pth").exists()
    odd = tmp_path / "odd.bin"
    odd.write_bytes(b"x" * 10)
    monkeypatch.setitem(milnce.weights.REGISTRY, "s3d_howto100m", _info(server, name="s3d_howto100m"))
    assert main(["download", "--from", str(odd)]) == 2
    err = capsys.readouterr().err
    assert "has 10 bytes: neither" in err and err.count("\n") == 1


def test_download_from_url_follows_drive(server, monkeypatch, capsys):
    monkeypatch.setitem(milnce.weights.REGISTRY, "s3d_howto100m", _info(server, name="s3d_howto100m"))
    assert main(["download", "--quiet", "--from", server.url("uc?export=download&id=VOCABID")]) == 0
    assert (cache_dir() / "s3d_dict.npy").read_bytes() == server.files["s3d_dict.npy"]
    assert [p.name for p in cache_dir().iterdir() if "from-url" in p.name] == []  # no temporary left


def test_info_lists_the_sources_in_order(monkeypatch, capsys):
    monkeypatch.setenv("MILNCE_MIRRORS", "https://example.org/m/")
    assert main(["info", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)["weights"]["s3d_howto100m"]["sources"]
    assert found[0] == "https://example.org/m/s3d_howto100m.pth ($MILNCE_MIRRORS)"
    assert found[2].endswith("id=1p_CMGppAQk3B0_Z0i1r2AN_D1FM3kUFW (registry mirror)") and len(found) == 4
