"""Checkpoint loading/validation, the high-level API, torch.hub and the model CLI commands."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import milnce
from conftest import VOCAB, random_state_dict, write_checkpoint
from milnce.cli import main
from milnce.weights import CheckpointError, fingerprint, load_checkpoint, save_bundle

ROOT = Path(__file__).resolve().parents[1]


def test_published_checkpoint_loads_strict(checkpoint):
    sd, spec = load_checkpoint(checkpoint[0])
    assert spec.space_to_depth and spec.vocab_size == len(VOCAB) + 1 and spec.embed_dim == 512
    assert len(sd) == 537


def test_training_checkpoint_no_space_to_depth(tmp_path):
    w, v = write_checkpoint(tmp_path, space_to_depth=False, training=True)
    sd, spec = load_checkpoint(w)
    assert not spec.space_to_depth
    assert not any(k.startswith("module.") for k in sd)
    model = milnce.load_model(w, v, download=False)
    assert not model.space_to_depth
    emb = model.encode_video(torch.rand(1, 3, 7, 45, 51))  # odd sizes are fine without space-to-depth
    assert emb.shape == (1, 512)


def test_safetensors_and_bundle_roundtrip(checkpoint, tmp_path):
    sd, _ = load_checkpoint(checkpoint[0])
    out = save_bundle(sd, np.asarray(VOCAB), tmp_path / "bundle")
    assert json.loads((out / "config.json").read_text())["fingerprint"] == fingerprint(sd)
    a = milnce.load_model(*checkpoint, download=False)
    b = milnce.load_model(out, download=False)  # folder: model.safetensors + vocab.npy
    c = milnce.load_model(out / "model.safetensors", download=False)
    assert a.weights_id == b.weights_id == c.weights_id
    x = torch.rand(1, 3, 8, 64, 64)
    torch.testing.assert_close(a.encode_video(x), b.encode_video(x))
    torch.testing.assert_close(a.encode_text(["open door"]), c.encode_text(["open door"]))


def _save(tmp_path: Path, obj, name="bad.pth") -> Path:
    p = tmp_path / name
    torch.save(obj, p)
    return p


class _Evil:
    def __reduce__(self):
        return (print, ("this would run code",))


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda p: p.write_bytes(b""), "empty"),
        (lambda p: p.write_bytes(b"not a checkpoint at all" * 100), "truncated or corrupt"),
        (lambda p: torch.save(torch.nn.Linear(3, 4).state_dict(), p), "not an S3D"),
        (lambda p: torch.save({"net": _Evil()}, p), r"contains pickled Python objects / code.*refused \(not a plain tensor"),
        (lambda p: torch.save([1, 2, 3], p), "expected a state dict"),
    ],
)
def test_bad_checkpoint_files(tmp_path, make, match):
    p = tmp_path / "bad.pth"
    make(p)
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(p)


def test_truncated_checkpoint(checkpoint, tmp_path):
    data = checkpoint[0].read_bytes()
    p = tmp_path / "trunc.pth"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(p)


def test_checkpoint_key_and_shape_problems(tmp_path):
    sd = random_state_dict()
    missing = dict(sd)
    del missing["mixed_4c.conv_b0.conv1.weight"]
    with pytest.raises(CheckpointError, match="1 missing keys.*mixed_4c.conv_b0.conv1.weight"):
        load_checkpoint(_save(tmp_path, missing))
    extra = dict(sd, **{"head.weight": torch.zeros(2)})
    with pytest.raises(CheckpointError, match="unexpected keys.*head.weight"):
        load_checkpoint(_save(tmp_path, extra))
    wrong = dict(sd, **{"gating.fc.weight": torch.zeros(10, 10)})
    with pytest.raises(CheckpointError, match=r"wrong shapes.*gating.fc.weight: \(10, 10\)"):
        load_checkpoint(_save(tmp_path, wrong))
    nan = dict(sd, **{"fc.bias": torch.full((512,), float("nan"))})
    with pytest.raises(CheckpointError, match="NaN"):
        load_checkpoint(_save(tmp_path, nan))
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "nope.pth")


def test_vocabulary_must_match_embedding(checkpoint, tmp_path):
    short = tmp_path / "short.npy"
    np.save(short, np.asarray(VOCAB[:-5]))
    with pytest.raises(CheckpointError, match=f"{len(VOCAB) - 5} words.*{len(VOCAB) + 1} rows"):
        milnce.load_model(checkpoint[0], short, download=False)
    with pytest.raises(ValueError, match="rows"):
        milnce.S3D(VOCAB[:10], 512, num_embeddings=len(VOCAB) + 1)


def test_encode_api(model):
    from conftest import real_clip_batch
    from milnce.fast import rounding_bound

    clips = real_clip_batch(8, 64)[:3]  # real video: the model is calibrated on it (noise is far out of range)
    emb = model.encode_video(clips, batch_size=2)
    emb2, feats = model.encode_video(clips, features=True)
    assert emb.shape == (3, 512) and feats.shape == (3, 1024)
    # float32 rounding of the whole tower (summed terms per layer, layers added), relative to the largest value
    tol = rounding_bound(model.net, skip=model.net.text_module)
    torch.testing.assert_close(emb, emb2, rtol=0, atol=tol * float(emb.abs().max()))  # batch split: rounding only
    with torch.inference_mode():
        ref = model.net(clips)["video_embedding"]
    assert ((emb - ref).abs().max() / ref.abs().max()).item() < tol
    # uint8 frames are scaled to [0, 1]
    u8 = (clips * 255).round().to(torch.uint8)
    torch.testing.assert_close(model.encode_video(u8), model.encode_video(u8.float() / 255))
    t = model.encode_text(["cut tomato", "open door"])
    assert t.shape == (2, 512)
    torch.testing.assert_close(model.encode_text("cut tomato"), t[:1])
    s = model.similarity(t, emb)
    torch.testing.assert_close(s, t @ emb.T)


def test_text_bad_input(model):
    with pytest.raises(ValueError, match="empty"):
        model.encode_text([])
    with pytest.warns(UserWarning, match="no word in the vocabulary"):
        e = model.encode_text(["   ", "qwertyuiop"])
    torch.testing.assert_close(e[0], e[1])
    long = model.encode_text(["cut " * 1000])  # truncated to 16 words
    torch.testing.assert_close(long, model.encode_text(["cut " * 16]))


def test_eager_and_bf16_options(checkpoint):
    eager = milnce.load_model(*checkpoint, fast=False, download=False)
    bf16 = milnce.load_model(*checkpoint, precision="bf16", download=False)
    from conftest import real_clip_batch

    x = real_clip_batch(8, 64)[:4]
    a, b = eager.encode_video(x), bf16.encode_video(x)
    # bf16 rounding through 57 convolutions of a random (video-calibrated) net: ~2% off in direction
    cos = torch.nn.functional.cosine_similarity(a, b)
    assert cos.min() > 0.95 and cos.mean() > 0.97
    with pytest.raises(ValueError, match="precision"):
        milnce.load_model(*checkpoint, precision="fp16", download=False)  # type: ignore[arg-type]


def test_env_variables_and_missing_files(checkpoint, monkeypatch, tmp_path):
    monkeypatch.setenv("MILNCE_WEIGHTS", str(checkpoint[0]))
    monkeypatch.setenv("MILNCE_VOCAB", str(checkpoint[1]))
    assert milnce.load_model(download=False).encode_text(["open"]).shape == (1, 512)
    monkeypatch.delenv("MILNCE_WEIGHTS")
    monkeypatch.delenv("MILNCE_VOCAB")
    with pytest.raises(FileNotFoundError, match="--weights"):
        milnce.load_model(download=False)
    from milnce.download import cache_dir

    (cache_dir() / "s3d_howto100m.pth").write_bytes(checkpoint[0].read_bytes())
    with pytest.raises(FileNotFoundError, match="missing .*s3d_dict.npy"):  # never downloads
        milnce.load_model(download=False)
    (cache_dir() / "s3d_dict.npy").write_bytes(checkpoint[1].read_bytes())
    assert milnce.load_model(download=False).encode_text(["open"]).shape == (1, 512)
    (cache_dir() / "s3d_dict.npy").unlink()
    lone = tmp_path / "lone" / "w.pth"
    lone.parent.mkdir()
    lone.write_bytes(checkpoint[0].read_bytes())
    with pytest.raises(FileNotFoundError, match="vocabulary"):
        milnce.load_model(lone, download=False)


def test_hubconf(checkpoint, monkeypatch):
    sys.path.insert(0, str(ROOT))
    try:
        import hubconf
    finally:
        sys.path.remove(str(ROOT))
    assert "s3d_howto100m" in dir(hubconf)
    net = hubconf.s3d_howto100m(pretrained=False)
    assert isinstance(net, milnce.S3D)
    monkeypatch.setenv("MILNCE_WEIGHTS", str(checkpoint[0]))
    monkeypatch.setenv("MILNCE_VOCAB", str(checkpoint[1]))
    net = hubconf.s3d_howto100m(pretrained=True)
    assert net.text_module(["open door"])["text_embedding"].shape == (1, 512)
    assert not net.training


# --- CLI -------------------------------------------------------------------------------


def _args(checkpoint):
    return ["--weights", str(checkpoint[0]), "--vocab", str(checkpoint[1]), "--no-download"]


def test_cli_help(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for cmd in ("download", "info", "embed-text", "convert"):
        assert cmd in out
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0


def test_cli_embed_text(checkpoint, model, tmp_path, capsys):
    out = tmp_path / "t.npy"
    assert main(["embed-text", "cut tomato", "open door", "--out", str(out), *_args(checkpoint)]) == 0
    arr = np.load(out, allow_pickle=False)
    assert arr.shape == (2, 512) and arr.dtype == np.float32
    np.testing.assert_allclose(arr, model.encode_text(["cut tomato", "open door"]).numpy(), rtol=1e-5, atol=1e-6)
    capsys.readouterr()
    assert main(["embed-text", "Cut the XYZ tomato", "--json", *_args(checkpoint)]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["words"] == ["cut", "the", "tomato"] and rows[0]["unknown"] == ["xyz"]
    assert len(rows[0]["embedding"]) == 512


def test_cli_similarity(checkpoint, model, tmp_path, capsys):
    video = model.encode_video(torch.rand(2, 3, 8, 64, 64)).numpy()
    np.save(tmp_path / "v.npy", video)
    np.savez(tmp_path / "w.npz", embeddings=video[:1], starts=np.array([0.0]), ends=np.array([3.2]))
    assert main(["similarity", "--text", "cut tomato", "--video-embeddings", str(tmp_path / "v.npy"),
                 str(tmp_path / "w.npz"), "--json", *_args(checkpoint)]) == 0
    res = json.loads(capsys.readouterr().out)
    expected = model.encode_text(["cut tomato"]).numpy() @ np.concatenate([video, video[:1]]).T
    np.testing.assert_allclose(res["scores"], expected.round(5), rtol=1e-4, atol=1e-4)
    assert len(res["videos"]) == 3


def test_cli_convert_and_info(checkpoint, tmp_path, capsys):
    assert main(["convert", str(tmp_path / "b"), *_args(checkpoint)]) == 0
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


@pytest.mark.slow
def test_benchmark_script_runs(capsys):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench_inference
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    assert bench_inference.main(["--quick", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    assert "x eager" in out and "fast fp32" in out
