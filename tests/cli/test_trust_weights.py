"""Weights you can trust, loaded fast: verification on every path, cached verdicts, a cheap build,
clear errors for refused or damaged files, and the model commands' output (issue 10)."""

from __future__ import annotations

import json
import os
import pickle
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import milnce
import milnce.api
import milnce.integrity
import milnce.weights
from conftest import VOCAB, random_state_dict
from milnce.cli import main
from milnce.download import CHECKSUMS_FILE, DownloadError, _record_checksum, _stat_entry, cache_dir
from milnce.model import S3D, state_dict_shapes
from milnce.weights import CheckpointError, fingerprint, load_checkpoint, load_verified, save_bundle

ROOT = Path(__file__).resolve().parents[2]


def _args(ckpt) -> list[str]:
    return ["--weights", str(ckpt[0]), "--vocab", str(ckpt[1]), "--no-download"]


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


# --------------------------------------------------------------------------- start-up


@pytest.mark.parametrize("s2d", [True, False])
def test_state_dict_shapes_table_matches_the_network(s2d):
    net = S3D(None, 256, space_to_depth=s2d, num_embeddings=77)
    real = [(k, tuple(v.shape)) for k, v in net.state_dict().items()]
    assert list(state_dict_shapes(s2d, 77, 256).items()) == real
    assert milnce.weights.expected_shapes(s2d, 77, 256) == dict(real)


def test_load_model_builds_on_meta_once_and_the_fast_path_lazily(checkpoint, monkeypatch):
    built_on = []
    real_init = S3D.__init__

    def spy(self, *a, **kw):
        built_on.append(torch.empty(0).device.type)  # the device a factory call lands on right now
        real_init(self, *a, **kw)

    monkeypatch.setattr(S3D, "__init__", spy)
    model = milnce.load_model(*checkpoint, download=False)
    assert built_on == ["meta"]  # no CPU network built for shape checks, no random init to overwrite
    assert not any(p.is_meta for p in model.parameters())
    assert "video_net" not in model._modules  # text-only users never build the fast video path
    model.encode_text(["cut tomato"])
    assert "video_net" not in model._modules
    ref = milnce.load_model(*checkpoint, download=False, fast=False)
    from conftest import real_clip_batch

    x = real_clip_batch(8, 64)[:1]
    a, b = model.encode_video(x), ref.encode_video(x)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-4 * float(b.abs().max()))
    assert type(model.video_net).__name__ == "FastVideoNet" and "video_net" in model._modules
    assert model.video_net is model.video_net


def test_verdict_is_cached_by_size_and_mtime(checkpoint, tmp_path, monkeypatch):
    w = tmp_path / "w.pth"
    w.write_bytes(checkpoint[0].read_bytes())
    first = load_verified(w)
    assert not first.cached and (cache_dir() / milnce.integrity.VERIFIED_FILE).is_file()

    def boom(*a, **kw):
        raise AssertionError("re-verified an unchanged file")

    monkeypatch.setattr(milnce.integrity, "zip_problem", boom)
    monkeypatch.setattr(milnce.weights, "fingerprint", boom)
    second = load_verified(w)
    assert second.cached and second.fingerprint == first.fingerprint
    model = milnce.load_model(w, checkpoint[1], download=False)
    assert model.weights_id == first.fingerprint
    monkeypatch.undo()
    st = w.stat()
    os.utime(w, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched: verified again
    assert not load_verified(w).cached


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


def test_bundle_with_changed_weights_is_refused(checkpoint, tmp_path):
    sd, _ = load_checkpoint(checkpoint[0])
    out = save_bundle(sd, np.asarray(VOCAB), tmp_path / "b")
    from safetensors.torch import save_file

    changed = {k: v.clone() for k, v in sd.items()}
    changed["fc.bias"][0] += 1.0
    save_file(changed, str(out / "model.safetensors"))
    with pytest.raises(CheckpointError, match="changed since the bundle was written"):
        milnce.load_model(out, download=False)


class _System:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("writer", ["torch", "legacy", "raw"])
def test_pickled_code_is_named_as_such(tmp_path, writer, capsys):
    p = tmp_path / "evil.pth"
    if writer == "torch":
        torch.save({"net": _System()}, p)
    elif writer == "legacy":
        torch.save({"net": _System()}, p, _use_new_zipfile_serialization=False)
    else:
        with open(p, "wb") as f:
            pickle.dump({"net": _System()}, f)
    with pytest.raises(CheckpointError, match=r"contains pickled Python objects / code .*system.*refused "
                                              r"\(not a plain tensor checkpoint\)") as exc:
        load_checkpoint(p)
    assert "truncated" not in str(exc.value)
    assert capsys.readouterr().out == ""  # nothing ran


def test_garbage_is_still_truncated_or_corrupt(tmp_path):
    p = tmp_path / "junk.pth"
    p.write_bytes(b"not a checkpoint at all" * 100)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(p)


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


def test_unknown_word_warning_points_at_the_caller(model):
    with pytest.warns(UserWarning, match="no word in the vocabulary") as rec:
        model.encode_text(["qwxz"])
    assert rec[0].filename == __file__


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


# --------------------------------------------------------------------------- full size


@pytest.mark.slow
def test_full_size_checkpoint_loads_text_only_and_caches_its_verdict(tmp_path_factory, monkeypatch):
    folder = tmp_path_factory.mktemp("full")
    sd = random_state_dict(vocab_size=66250)
    torch.save(sd, folder / "s3d_howto100m.pth")
    np.save(folder / "s3d_dict.npy", np.asarray([f"w{i}" for i in range(66249)], dtype=str), allow_pickle=False)
    want = fingerprint(sd)
    del sd
    model = milnce.load_model(folder / "s3d_howto100m.pth", folder / "s3d_dict.npy", download=False)
    assert model.weights_id == want and model.encode_text(["w1 w2"]).shape == (1, 512)
    monkeypatch.setattr(milnce.integrity, "zip_problem", lambda p: pytest.fail("re-verified"))
    again = milnce.load_model(folder / "s3d_howto100m.pth", folder / "s3d_dict.npy", download=False)
    assert again.weights_id == want and "video_net" not in again._modules


@pytest.mark.slow
def test_startup_benchmark_runs(capsys):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench_startup
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    assert bench_startup.main(["--quick", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    assert "x import torch" in out and "load_model + encode_text" in out and "milnce --help" in out



def test_lazy_fast_path_is_usable_outside_inference_mode(checkpoint):
    model = milnce.load_model(*checkpoint, download=False)
    with torch.inference_mode():
        model.encode_video(torch.rand(1, 3, 8, 64, 64))  # first use builds it
    assert not any(p.is_inference() for p in model.video_net.parameters())
    with torch.no_grad():
        assert model(torch.rand(1, 3, 8, 64, 64))["video_embedding"].shape == (1, 512)
