"""``milnce download``, ``milnce info``, ``milnce embed-text``, ``milnce similarity``, ``milnce convert`` end to
end (``milnce.commands.model``): the CLI run through ``main(argv)`` or a subprocess."""

from __future__ import annotations

import json
import os
import sys
import threading
import zipfile
from pathlib import Path

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
from conftest import VOCAB
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
from milnce.weights import CheckpointError, load_checkpoint, load_verified
from video_fixtures import flip_inside_member
from weights_fixtures import mirror_info, offline_args, one_line_error, random_weights, weights_info


def test_cli_download(weights_server, monkeypatch, capsys):
    monkeypatch.setitem(milnce.weights.REGISTRY, "s3d_howto100m", weights_info(weights_server, name="s3d_howto100m"))
    assert main(["download", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert str(cache_dir() / "s3d_howto100m.pth") in out and str(cache_dir() / "s3d_dict.npy") in out


def test_cli_download_404(weights_server, monkeypatch, capsys):
    monkeypatch.setitem(milnce.weights.REGISTRY, "s3d_howto100m", weights_info(weights_server, "missing", name="s3d_howto100m"))
    assert main(["download", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("milnce: error: not found at URL http://127.0.0.1")
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_cli_info_reports_cache(weights_server, monkeypatch, capsys):
    monkeypatch.setitem(milnce.weights.REGISTRY, "s3d_howto100m", weights_info(weights_server, name="s3d_howto100m"))
    assert main(["info", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["cache"] == str(cache_dir())
    assert "not downloaded" in report["weights"]["s3d_howto100m"]["weights"]


def test_cli_download_offline_hint_fits_the_command(weights_server, monkeypatch, capsys):
    monkeypatch.setitem(milnce.weights.REGISTRY, "s3d_howto100m", weights_info(weights_server, "missing", name="s3d_howto100m"))
    assert main(["download", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "pass --weights" not in err  # `milnce download` has no such option
    assert "MILNCE_WEIGHTS/MILNCE_VOCAB" in err and "copy them into the cache folder" in err


def test_bad_mirror_entry_is_one_line(mirror_server, monkeypatch, capsys):
    monkeypatch.setenv("MILNCE_MIRRORS", "http://a/w.pth http://a/v.npy http://a/extra")
    with pytest.raises(MirrorError, match="not one folder URL or two file URLs"):
        sources(mirror_info(mirror_server))
    monkeypatch.setitem(milnce.weights.REGISTRY, "s3d_howto100m", mirror_info(mirror_server, name="s3d_howto100m"))
    assert main(["download", "--quiet"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_download_from_files_checks_and_installs(mirror_server, checkpoint, monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(milnce.weights.REGISTRY, "s3d_howto100m", mirror_info(mirror_server, name="s3d_howto100m"))
    wpath, vpath = checkpoint
    assert main(["download", "--from", str(wpath), "--from", str(vpath)]) == 0
    out = capsys.readouterr().out
    assert out.count("verified: ") == 2
    assert (cache_dir() / "s3d_howto100m.pth").read_bytes() == wpath.read_bytes()
    record = json.loads((cache_dir() / CHECKSUMS_FILE).read_text())
    assert record["s3d_dict.npy"]["from"] == str(vpath) and len(record["s3d_howto100m.pth"]["sha256"]) == 64
    # now the published-weights path finds them without any download
    mirror_server.hits.clear()
    ensure_weights(milnce.weights.REGISTRY["s3d_howto100m"], progress=False)
    assert mirror_server.hits == []


def test_download_from_refuses_pickled_code_and_wrong_sizes(mirror_server, monkeypatch, tmp_path, capsys):
    evil = tmp_path / "s3d_howto100m.pth"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "payload": threading.Lock}, evil)  # a pickled global
    info = mirror_info(mirror_server, num_bytes=evil.stat().st_size)
    with pytest.raises(DownloadError, match="pickled Python objects"):
        install_from(info, str(evil), progress=False)
    assert not (cache_dir() / "s3d_howto100m.pth").exists()
    odd = tmp_path / "odd.bin"
    odd.write_bytes(b"x" * 10)
    monkeypatch.setitem(milnce.weights.REGISTRY, "s3d_howto100m", mirror_info(mirror_server, name="s3d_howto100m"))
    assert main(["download", "--from", str(odd)]) == 2
    err = capsys.readouterr().err
    assert "has 10 bytes: neither" in err and err.count("\n") == 1


def test_download_from_url_follows_drive(mirror_server, monkeypatch, capsys):
    monkeypatch.setitem(milnce.weights.REGISTRY, "s3d_howto100m", mirror_info(mirror_server, name="s3d_howto100m"))
    assert main(["download", "--quiet", "--from", mirror_server.url("uc?export=download&id=VOCABID")]) == 0
    assert (cache_dir() / "s3d_dict.npy").read_bytes() == mirror_server.files["s3d_dict.npy"]
    assert [p.name for p in cache_dir().iterdir() if "from-url" in p.name] == []  # no temporary left


def test_info_lists_the_sources_in_order(monkeypatch, capsys):
    monkeypatch.setenv("MILNCE_MIRRORS", "https://example.org/m/")
    assert main(["info", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)["weights"]["s3d_howto100m"]["sources"]
    assert found[0] == "https://example.org/m/s3d_howto100m.pth ($MILNCE_MIRRORS)"
    assert found[2].endswith("id=1p_CMGppAQk3B0_Z0i1r2AN_D1FM3kUFW (registry mirror)") and len(found) == 4


@pytest.mark.parametrize("device", ["cuda", "cuda:99", "meta", "cpu;rm", "tpu"])
def test_bad_device_is_one_line(checkpoint, capsys, device):
    if device.startswith("cuda") and torch.cuda.is_available() and device != "cuda:99":
        pytest.skip("this machine has CUDA")
    assert main(["embed-text", "open door", *offline_args(checkpoint), "--device", device]) == 2
    assert repr(device) in one_line_error(capsys)


def test_pth_with_complex_or_int64_tensors_is_refused(tmp_path, capsys):
    for dtype in (torch.complex64, torch.int64):
        sd = random_weights()
        sd["fc.weight"] = sd["fc.weight"].to(dtype)
        path = tmp_path / f"{dtype}.pth"
        torch.save(sd, path)
        with pytest.raises(CheckpointError, match="not real floating-point.*fc.weight"):
            load_verified(path)
        np.save(tmp_path / "v.npy", np.asarray(VOCAB, dtype=str))
        assert main(["embed-text", "x", "--weights", str(path), "--vocab", str(tmp_path / "v.npy"),
                     "--no-download"]) == 2
        assert "fc.weight" in one_line_error(capsys)


# --------------------------------------------------------------------------- vocabulary, convert, export


def test_own_vocabulary_beats_milnce_vocab(checkpoint, tmp_path, monkeypatch):
    assert main(["convert", str(tmp_path / "b"), *offline_args(checkpoint)]) == 0
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
        assert main(["convert", str(tmp_path / "b"), *offline_args(checkpoint), "--device", "cpu"]) == 0
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


@pytest.mark.parametrize("damage", ["flip", "truncate", "object", "zero", "strings"])
def test_similarity_on_damaged_or_odd_files_is_one_line(tmp_path, damage, wargs, capsys):
    f = tmp_path / "e.npz"
    VideoWindows("v.mp4", np.array([0.0, 0.4]), np.array([0.8, 1.2]), np.ones((2, 512), np.float32)).save(f)
    if damage == "flip":
        flip_inside_member(f)
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
    assert main(["embed-text", "open", *offline_args((bad, checkpoint[1]))]) == 2
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
    assert main(["convert", str(tmp_path / "afile"), *offline_args(checkpoint)]) == 2
    err = capsys.readouterr().err
    assert "exists and is not a folder" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert main(["convert", str(tmp_path / "b"), *offline_args(checkpoint)]) == 0
    assert main(["convert", str(tmp_path / "b"), *offline_args(checkpoint)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "b"), "--overwrite", *offline_args(checkpoint)]) == 0


def test_embed_text_out_reports_the_file_written(checkpoint, tmp_path, capsys):
    folder = tmp_path / "outdir"
    folder.mkdir()
    assert main(["embed-text", "open door", "--out", str(folder), *offline_args(checkpoint)]) == 0
    written = folder / "text_embeddings.npy"
    assert f"to {written}\n" in capsys.readouterr().out
    assert np.load(written).shape == (1, 512)
    assert main(["embed-text", "open door", "--out", str(tmp_path / "emb"), *offline_args(checkpoint)]) == 0
    assert f"to {tmp_path / 'emb.npy'}\n" in capsys.readouterr().out and (tmp_path / "emb.npy").is_file()
    assert not list(tmp_path.glob("*.tmp")) and not list(folder.glob("*.tmp"))


def test_embed_text_prints_rounded_values(checkpoint, capsys):
    assert main(["embed-text", "cut tomato", "--json", *offline_args(checkpoint)]) == 0
    emb = json.loads(capsys.readouterr().out)[0]["embedding"]
    assert len(emb) == 512 and all(round(x, 4) == x for x in emb)
    assert main(["embed-text", "cut tomato", *offline_args(checkpoint)]) == 0
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


def test_cli_embed_text(checkpoint, model, tmp_path, capsys):
    out = tmp_path / "t.npy"
    assert main(["embed-text", "cut tomato", "open door", "--out", str(out), *offline_args(checkpoint)]) == 0
    arr = np.load(out, allow_pickle=False)
    assert arr.shape == (2, 512) and arr.dtype == np.float32
    np.testing.assert_allclose(arr, model.encode_text(["cut tomato", "open door"]).numpy(), rtol=1e-5, atol=1e-6)
    capsys.readouterr()
    assert main(["embed-text", "Cut the XYZ tomato", "--json", *offline_args(checkpoint)]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["words"] == ["cut", "the", "tomato"] and rows[0]["unknown"] == ["xyz"]
    assert len(rows[0]["embedding"]) == 512


def test_cli_similarity(checkpoint, model, tmp_path, capsys):
    video = model.encode_video(torch.rand(2, 3, 8, 64, 64)).numpy()
    np.save(tmp_path / "v.npy", video)
    np.savez(tmp_path / "w.npz", embeddings=video[:1], starts=np.array([0.0]), ends=np.array([3.2]))
    assert main(["similarity", "--text", "cut tomato", "--video-embeddings", str(tmp_path / "v.npy"),
                 str(tmp_path / "w.npz"), "--json", *offline_args(checkpoint)]) == 0
    res = json.loads(capsys.readouterr().out)
    expected = model.encode_text(["cut tomato"]).numpy() @ np.concatenate([video, video[:1]]).T
    np.testing.assert_allclose(res["scores"], expected.round(5), rtol=1e-4, atol=1e-4)
    assert len(res["videos"]) == 3


def test_cli_convert_and_info(checkpoint, tmp_path, capsys):
    assert main(["convert", str(tmp_path / "b"), *offline_args(checkpoint)]) == 0
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
