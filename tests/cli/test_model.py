"""``milnce download``, ``milnce info``, ``milnce embed-text``, ``milnce similarity``, ``milnce convert`` end to
end (``milnce.commands.model``): the CLI run through ``main(argv)`` or a subprocess."""

from __future__ import annotations

import json
import os
import sys
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
import torch

import milnce
import milnce.api
import milnce.atomic
import milnce.download
import milnce.fast
import milnce.integrity
import milnce.weights
from conftest import VOCAB, random_state_dict
from milnce.cli import main
from milnce.download import (
    CHECKSUMS_FILE,
    DownloadError,
    cache_dir,
    ensure_weights,
    install_from,
)
from milnce.errors import MissingFileError
from milnce.mirrors import MirrorError, sources
from milnce.video import VideoWindows
from milnce.weights import (
    CheckpointError,
    WeightsInfo,
    load_checkpoint,
    load_verified,
)

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


def test_cli_download(server, monkeypatch, capsys):
    monkeypatch.setitem(milnce.weights.REGISTRY, "s3d_howto100m", _info(server, name="s3d_howto100m"))
    assert main(["download", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert str(cache_dir() / "s3d_howto100m.pth") in out and str(cache_dir() / "s3d_dict.npy") in out


def test_cli_download_404(server, monkeypatch, capsys):
    monkeypatch.setitem(milnce.weights.REGISTRY, "s3d_howto100m", _info(server, "missing", name="s3d_howto100m"))
    assert main(["download", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("milnce: error: not found at URL http://127.0.0.1")
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_cli_info_reports_cache(server, monkeypatch, capsys):
    monkeypatch.setitem(milnce.weights.REGISTRY, "s3d_howto100m", _info(server, name="s3d_howto100m"))
    assert main(["info", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["cache"] == str(cache_dir())
    assert "not downloaded" in report["weights"]["s3d_howto100m"]["weights"]


def test_cli_download_offline_hint_fits_the_command(server, monkeypatch, capsys):
    monkeypatch.setitem(milnce.weights.REGISTRY, "s3d_howto100m", _info(server, "missing", name="s3d_howto100m"))
    assert main(["download", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "pass --weights" not in err  # `milnce download` has no such option
    assert "MILNCE_WEIGHTS/MILNCE_VOCAB" in err and "copy them into the cache folder" in err

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


def _info_download_mirrors(srv: _Server_download_mirrors, **kw) -> WeightsInfo:
    fields = dict(name="test_model", url=srv.url("missing/s3d_howto100m.pth"), vocab_url=srv.url("missing/s3d_dict.npy"),
                  filename="s3d_howto100m.pth", vocab_filename="s3d_dict.npy",
                  num_bytes=len(srv.files["s3d_howto100m.pth"]), vocab_num_bytes=len(srv.files["s3d_dict.npy"]),
                  vocab_words=len(VOCAB))
    fields.update(kw)
    return WeightsInfo(**fields)  # type: ignore[arg-type]


def test_bad_mirror_entry_is_one_line(server_download_mirrors, monkeypatch, capsys):
    monkeypatch.setenv("MILNCE_MIRRORS", "http://a/w.pth http://a/v.npy http://a/extra")
    with pytest.raises(MirrorError, match="not one folder URL or two file URLs"):
        sources(_info_download_mirrors(server_download_mirrors))
    monkeypatch.setitem(milnce.weights.REGISTRY, "s3d_howto100m", _info_download_mirrors(server_download_mirrors, name="s3d_howto100m"))
    assert main(["download", "--quiet"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_download_from_files_checks_and_installs(server_download_mirrors, checkpoint, monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(milnce.weights.REGISTRY, "s3d_howto100m", _info_download_mirrors(server_download_mirrors, name="s3d_howto100m"))
    wpath, vpath = checkpoint
    assert main(["download", "--from", str(wpath), "--from", str(vpath)]) == 0
    out = capsys.readouterr().out
    assert out.count("verified: ") == 2
    assert (cache_dir() / "s3d_howto100m.pth").read_bytes() == wpath.read_bytes()
    record = json.loads((cache_dir() / CHECKSUMS_FILE).read_text())
    assert record["s3d_dict.npy"]["from"] == str(vpath) and len(record["s3d_howto100m.pth"]["sha256"]) == 64
    # now the published-weights path finds them without any download
    server_download_mirrors.hits.clear()
    ensure_weights(milnce.weights.REGISTRY["s3d_howto100m"], progress=False)
    assert server_download_mirrors.hits == []


def test_download_from_refuses_pickled_code_and_wrong_sizes(server_download_mirrors, monkeypatch, tmp_path, capsys):
    evil = tmp_path / "s3d_howto100m.pth"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "payload": threading.Lock}, evil)  # a pickled global
    info = _info_download_mirrors(server_download_mirrors, num_bytes=evil.stat().st_size)
    with pytest.raises(DownloadError, match="pickled Python objects"):
        install_from(info, str(evil), progress=False)
    assert not (cache_dir() / "s3d_howto100m.pth").exists()
    odd = tmp_path / "odd.bin"
    odd.write_bytes(b"x" * 10)
    monkeypatch.setitem(milnce.weights.REGISTRY, "s3d_howto100m", _info_download_mirrors(server_download_mirrors, name="s3d_howto100m"))
    assert main(["download", "--from", str(odd)]) == 2
    err = capsys.readouterr().err
    assert "has 10 bytes: neither" in err and err.count("\n") == 1


def test_download_from_url_follows_drive(server_download_mirrors, monkeypatch, capsys):
    monkeypatch.setitem(milnce.weights.REGISTRY, "s3d_howto100m", _info_download_mirrors(server_download_mirrors, name="s3d_howto100m"))
    assert main(["download", "--quiet", "--from", server_download_mirrors.url("uc?export=download&id=VOCABID")]) == 0
    assert (cache_dir() / "s3d_dict.npy").read_bytes() == server_download_mirrors.files["s3d_dict.npy"]
    assert [p.name for p in cache_dir().iterdir() if "from-url" in p.name] == []  # no temporary left


def test_info_lists_the_sources_in_order(monkeypatch, capsys):
    monkeypatch.setenv("MILNCE_MIRRORS", "https://example.org/m/")
    assert main(["info", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)["weights"]["s3d_howto100m"]["sources"]
    assert found[0] == "https://example.org/m/s3d_howto100m.pth ($MILNCE_MIRRORS)"
    assert found[2].endswith("id=1p_CMGppAQk3B0_Z0i1r2AN_D1FM3kUFW (registry mirror)") and len(found) == 4


def _args(ckpt) -> list[str]:
    return ["--weights", str(ckpt[0]), "--vocab", str(ckpt[1]), "--no-download"]


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("milnce: error:") and len(err.strip().splitlines()) == 1, err
    return err


@pytest.mark.parametrize("device", ["cuda", "cuda:99", "meta", "cpu;rm", "tpu"])
def test_bad_device_is_one_line(checkpoint, capsys, device):
    if device.startswith("cuda") and torch.cuda.is_available() and device != "cuda:99":
        pytest.skip("this machine has CUDA")
    assert main(["embed-text", "open door", *_args(checkpoint), "--device", device]) == 2
    assert repr(device) in _one_line_error(capsys)


def test_pth_with_complex_or_int64_tensors_is_refused(tmp_path, capsys):
    for dtype in (torch.complex64, torch.int64):
        sd = random_state_dict()
        sd["fc.weight"] = sd["fc.weight"].to(dtype)
        path = tmp_path / f"{dtype}.pth"
        torch.save(sd, path)
        with pytest.raises(CheckpointError, match="not real floating-point.*fc.weight"):
            load_verified(path)
        np.save(tmp_path / "v.npy", np.asarray(VOCAB, dtype=str))
        assert main(["embed-text", "x", "--weights", str(path), "--vocab", str(tmp_path / "v.npy"),
                     "--no-download"]) == 2
        assert "fc.weight" in _one_line_error(capsys)


# --------------------------------------------------------------------------- vocabulary, convert, export


def test_own_vocabulary_beats_milnce_vocab(checkpoint, tmp_path, monkeypatch):
    assert main(["convert", str(tmp_path / "b"), *_args(checkpoint)]) == 0
    other = tmp_path / "other.npy"
    np.save(other, np.asarray(VOCAB[:10], dtype=str))  # a word list of another size
    monkeypatch.setenv("MILNCE_VOCAB", str(other))
    assert milnce.load_model(tmp_path / "b", download=False).tokenizer.vocab_size == len(VOCAB) + 1
    assert milnce.load_model(tmp_path / "b" / "model.safetensors", download=False).tokenizer.vocab_size == len(VOCAB) + 1
    # a folder without its own vocab.npy never takes its parent's
    monkeypatch.delenv("MILNCE_VOCAB")
    parent = tmp_path / "parent"
    (parent / "run").mkdir(parents=True)
    np.save(parent / "vocab.npy", np.asarray(VOCAB, dtype=str))
    (parent / "run" / "model.safetensors").write_bytes((tmp_path / "b" / "model.safetensors").read_bytes())
    with pytest.raises(MissingFileError, match="no vocabulary found"):
        milnce.api.resolve_files(parent / "run", download=False)


def test_convert_writes_files_with_the_umask(checkpoint, tmp_path):
    old = os.umask(0o022)
    try:
        assert main(["convert", str(tmp_path / "b"), *_args(checkpoint), "--device", "cpu"]) == 0
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "b").iterdir()}
    assert modes == {"model.safetensors": 0o644, "vocab.npy": 0o644, "config.json": 0o644}


def test_convert_records_input_conventions(checkpoint, tmp_path):
    w, v = checkpoint
    assert main(["convert", str(tmp_path / "b"), "--weights", str(w), "--vocab", str(v), "--no-download"]) == 0
    config = json.loads((tmp_path / "b" / "config.json").read_text())
    assert config["inputs"]["fps"] == 10.0 and config["inputs"]["num_frames"] == 32
    config["inputs"]["num_frames"] = 16
    (tmp_path / "b" / "config.json").write_text(json.dumps(config))
    m = milnce.load_model(tmp_path / "b", download=False)
    assert m.info.num_frames == 16
    assert milnce.WindowSettings.for_model(m).num_frames == 16


def _flip_inside_member(path: Path, member: str = "video_embedding.npy") -> None:
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(member)
    data = bytearray(path.read_bytes())
    at = info.header_offset + 30 + len(info.filename) + len(info.extra) + info.file_size - 3  # in the data
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["flip", "truncate", "object", "zero", "strings"])
def test_similarity_on_damaged_or_odd_files_is_one_line(tmp_path, damage, wargs, capsys):
    f = tmp_path / "e.npz"
    VideoWindows("v.mp4", np.array([0.0, 0.4]), np.array([0.8, 1.2]), np.ones((2, 512), np.float32)).save(f)
    if damage == "flip":
        _flip_inside_member(f)
    elif damage == "truncate":
        f.write_bytes(f.read_bytes()[:300])
    elif damage == "object":
        np.save(tmp_path / "e.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
        f = tmp_path / "e.npy"
    elif damage == "zero":
        VideoWindows("v.mp4", np.zeros(0), np.zeros(0), np.zeros((0, 512), np.float32)).save(f)
    else:
        np.savez(f, video_embedding=np.array([["a", "b"]]), start=np.zeros(1), end=np.zeros(1))
    rc = main(["similarity", "--text", "a person cooking", "--video-embeddings", str(f), *wargs, "--no-download"])
    err = capsys.readouterr().err
    assert rc != 0 and err.startswith("milnce: error:") and len(err.strip().splitlines()) == 1, err
    assert "e.np" in err


def _flip_4kb(src: Path, dst: Path) -> Path:
    """A copy of ``src`` with 4 KB inverted inside the data of ``text_module.word_embd.weight``."""
    data = bytearray(src.read_bytes())
    keys = list(torch.load(src, weights_only=True, mmap=True))
    with zipfile.ZipFile(src) as zf:  # torch numbers the storages in the order it pickles them
        member = next(i for i in zf.infolist() if i.filename.endswith(f"/data/{keys.index('text_module.word_embd.weight')}"))
    head = member.header_offset
    start = head + 30 + int.from_bytes(data[head + 26:head + 28], "little") + int.from_bytes(data[head + 28:head + 30], "little")
    for i in range(start + 1024, start + 1024 + 4096):
        data[i] ^= 0xFF
    dst.write_bytes(bytes(data))
    return dst


# --------------------------------------------------------------------------- damaged files


def test_flipped_bytes_are_refused_on_every_path(checkpoint, tmp_path, capsys):
    bad = _flip_4kb(checkpoint[0], tmp_path / "bad.pth")
    sd = torch.load(bad, weights_only=True, mmap=True)  # the premise: torch alone loads it silently
    assert len(sd) == 537
    del sd
    with pytest.raises(CheckpointError, match="corrupt: member .* damaged.*Bad CRC-32"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="corrupt"):
        milnce.load_model(bad, checkpoint[1], download=False)
    # user-given --weights with --no-download
    assert main(["embed-text", "open", *_args((bad, checkpoint[1]))]) == 2
    err = capsys.readouterr().err
    assert err.startswith("milnce: error:") and "corrupt" in err and len(err.strip().splitlines()) == 1
    # the cached published weights, offline
    home = cache_dir()
    (home / "s3d_howto100m.pth").write_bytes(bad.read_bytes())
    (home / "s3d_dict.npy").write_bytes(checkpoint[1].read_bytes())
    with pytest.raises(CheckpointError, match="corrupt"):
        milnce.load_model(download=False)
    # a verified-good file is not cached as good once it goes bad
    good = tmp_path / "good.pth"
    good.write_bytes(checkpoint[0].read_bytes())
    load_verified(good)
    os.replace(_flip_4kb(good, tmp_path / "tmp.pth"), good)
    with pytest.raises(CheckpointError, match="corrupt"):
        load_verified(good)


# --------------------------------------------------------------------------- commands


def test_convert_onto_existing_paths(checkpoint, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    assert main(["convert", str(tmp_path / "afile"), *_args(checkpoint)]) == 2
    err = capsys.readouterr().err
    assert "exists and is not a folder" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert main(["convert", str(tmp_path / "b"), *_args(checkpoint)]) == 0
    assert main(["convert", str(tmp_path / "b"), *_args(checkpoint)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "b"), "--overwrite", *_args(checkpoint)]) == 0


def test_embed_text_out_reports_the_file_written(checkpoint, tmp_path, capsys):
    folder = tmp_path / "outdir"
    folder.mkdir()
    assert main(["embed-text", "open door", "--out", str(folder), *_args(checkpoint)]) == 0
    written = folder / "text_embeddings.npy"
    assert f"to {written}\n" in capsys.readouterr().out
    assert np.load(written).shape == (1, 512)
    assert main(["embed-text", "open door", "--out", str(tmp_path / "emb"), *_args(checkpoint)]) == 0
    assert f"to {tmp_path / 'emb.npy'}\n" in capsys.readouterr().out and (tmp_path / "emb.npy").is_file()
    assert not list(tmp_path.glob("*.tmp")) and not list(folder.glob("*.tmp"))


def test_embed_text_prints_rounded_values(checkpoint, capsys):
    assert main(["embed-text", "cut tomato", "--json", *_args(checkpoint)]) == 0
    emb = json.loads(capsys.readouterr().out)[0]["embedding"]
    assert len(emb) == 512 and all(round(x, 4) == x for x in emb)
    assert main(["embed-text", "cut tomato", *_args(checkpoint)]) == 0
    shown = capsys.readouterr().out.split("e[:4]=")[1].strip()
    assert all(len(x.strip().split(".")[-1]) <= 4 for x in shown.strip("[]").split(","))


def test_info_checks_env_files_and_lists_extras(checkpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MILNCE_WEIGHTS", str(checkpoint[0]))
    monkeypatch.setenv("MILNCE_VOCAB", str(checkpoint[1]))
    heavy_before = {m for m in ("fastapi", "matplotlib", "sklearn", "onnxruntime", "faiss") if m in sys.modules}
    assert main(["info", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert str(checkpoint[0]) in report["MILNCE_WEIGHTS"] and "verified" in report["MILNCE_WEIGHTS"]
    assert f"{checkpoint[0].stat().st_size:,} bytes" in report["MILNCE_WEIGHTS"]
    assert f"{len(VOCAB):,} words" in report["MILNCE_VOCAB"]
    assert set(report["extras"]) >= {"faiss-cpu", "fastapi", "uvicorn", "matplotlib", "onnxruntime", "scikit-learn",
                                     "pyyaml"}
    assert {m for m in ("fastapi", "matplotlib", "sklearn", "onnxruntime", "faiss") if m in sys.modules} == heavy_before
    bad = _flip_4kb(checkpoint[0], tmp_path / "bad.pth")
    monkeypatch.setenv("MILNCE_WEIGHTS", str(bad))
    monkeypatch.setenv("MILNCE_VOCAB", str(tmp_path / "missing.npy"))
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "NOT USABLE" in out and "corrupt" in out and "MISSING" in out and "extras" in out


# --- CLI -------------------------------------------------------------------------------


def _args_weights_api(checkpoint):
    return ["--weights", str(checkpoint[0]), "--vocab", str(checkpoint[1]), "--no-download"]


def test_cli_embed_text(checkpoint, model, tmp_path, capsys):
    out = tmp_path / "t.npy"
    assert main(["embed-text", "cut tomato", "open door", "--out", str(out), *_args_weights_api(checkpoint)]) == 0
    arr = np.load(out, allow_pickle=False)
    assert arr.shape == (2, 512) and arr.dtype == np.float32
    np.testing.assert_allclose(arr, model.encode_text(["cut tomato", "open door"]).numpy(), rtol=1e-5, atol=1e-6)
    capsys.readouterr()
    assert main(["embed-text", "Cut the XYZ tomato", "--json", *_args_weights_api(checkpoint)]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["words"] == ["cut", "the", "tomato"] and rows[0]["unknown"] == ["xyz"]
    assert len(rows[0]["embedding"]) == 512


def test_cli_similarity(checkpoint, model, tmp_path, capsys):
    video = model.encode_video(torch.rand(2, 3, 8, 64, 64)).numpy()
    np.save(tmp_path / "v.npy", video)
    np.savez(tmp_path / "w.npz", embeddings=video[:1], starts=np.array([0.0]), ends=np.array([3.2]))
    assert main(["similarity", "--text", "cut tomato", "--video-embeddings", str(tmp_path / "v.npy"),
                 str(tmp_path / "w.npz"), "--json", *_args_weights_api(checkpoint)]) == 0
    res = json.loads(capsys.readouterr().out)
    expected = model.encode_text(["cut tomato"]).numpy() @ np.concatenate([video, video[:1]]).T
    np.testing.assert_allclose(res["scores"], expected.round(5), rtol=1e-4, atol=1e-4)
    assert len(res["videos"]) == 3


def test_cli_convert_and_info(checkpoint, tmp_path, capsys):
    assert main(["convert", str(tmp_path / "b"), *_args_weights_api(checkpoint)]) == 0
    assert (tmp_path / "b" / "model.safetensors").exists()
    assert main(["embed-text", "open", "--weights", str(tmp_path / "b")]) == 0
    capsys.readouterr()
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["torch"] == torch.__version__ and "s3d_howto100m" in info["weights"]


def test_cli_errors_are_one_line(tmp_path, capsys, checkpoint):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"garbage" * 10)
    assert main(["embed-text", "open", "--weights", str(bad), "--vocab", str(checkpoint[1])]) == 2
    err = capsys.readouterr().err
    assert err.startswith("milnce: error:") and "Traceback" not in err
    assert main(["embed-text", "open", "--weights", str(tmp_path / "missing.pth"), "--vocab", str(checkpoint[1])]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["embed-text", "open", "--no-download"]) == 2
    assert "--weights" in capsys.readouterr().err
