"""``milnce.mirrors``: Where a registry entry's files can be had."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from conftest import VOCAB
from milnce.download import cache_dir
from milnce.mirrors import MIRRORS_FILE, confirm_url, download_url, sources
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


def test_drive_page_addresses_become_download_addresses():
    assert download_url("https://drive.google.com/file/d/AbC-1_x/view?usp=sharing") == \
        "https://drive.google.com/uc?export=download&id=AbC-1_x"
    assert download_url("https://drive.google.com/open?id=Q1") == "https://drive.google.com/uc?export=download&id=Q1"
    assert confirm_url(ERROR_PAGE, "https://x/") is None
    # a page cannot send the download to another scheme
    assert confirm_url('<a href="file:///etc/passwd?confirm=1">x</a>', "https://x/") is None


def test_mirror_list_bounded(tmp_path, monkeypatch):
    from milnce import mirrors
    from milnce.cache import cache_dir

    monkeypatch.delenv(mirrors.MIRRORS_ENV, raising=False)
    path = cache_dir() / mirrors.MIRRORS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# mine\nhttps://example.invalid/w  # note\n\n")
    assert [e for e, _ in mirrors.user_entries()] == ["https://example.invalid/w"]
    path.unlink()
    path.symlink_to("/dev/zero")
    with pytest.raises(mirrors.MirrorError, match="mirror list .*not a text file"):
        mirrors.user_entries()
    path.unlink()
    path.write_bytes(b"h" * (1 << 20))
    with pytest.raises(mirrors.MirrorError, match="line 1 is longer than"):
        mirrors.user_entries()
