"""``milnce.api``: High-level API."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import milnce
import milnce.api
import milnce.atomic
import milnce.fast
import milnce.integrity
import milnce.weights
from conftest import VOCAB, random_state_dict
from milnce.download import cache_dir
from milnce.errors import MissingFileError, UsageError
from milnce.model import S3D
from milnce.weights import CheckpointError, fingerprint
from weights_fixtures import weights_info


def test_check_device_resolves_a_ranks_gpu(monkeypatch):
    from milnce.api import check_device

    assert check_device("cpu", local_rank=3) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert check_device("cuda", local_rank=1) == torch.device("cuda", 1)
    assert check_device("cuda:0", local_rank=1) == torch.device("cuda", 0)
    with pytest.raises(UsageError, match="has 2 GPU"):
        check_device("cuda", local_rank=2)


# ----------------------------------------------------------------------------- API and CLI


def test_load_model_downloads_from_registry(weights_server, monkeypatch):
    monkeypatch.setitem(milnce.weights.REGISTRY, "s3d_howto100m", weights_info(weights_server, name="s3d_howto100m"))
    model = milnce.load_model(download=True, progress=False, fast=False)
    emb = model.encode_text(["cut tomato", "open the door"])
    assert emb.shape == (2, 512) and bool(torch.isfinite(emb).all())
    assert weights_server.count("s3d_howto100m.pth") == 1
    w, v, info = milnce.api.resolve_files(None, None, download=True, progress=False)
    assert (w, v) == (cache_dir() / "s3d_howto100m.pth", cache_dir() / "s3d_dict.npy")
    assert info is not None and info.name == "s3d_howto100m"
    assert len(weights_server.hits) == 2


def test_missing_weights_or_vocab_is_a_milnce_error(tmp_path, checkpoint):
    with pytest.raises(MissingFileError, match="weights file not found"):
        milnce.load_model(tmp_path / "nope.pth", checkpoint[1], download=False)
    with pytest.raises(MissingFileError, match="vocabulary file not found"):
        milnce.load_model(checkpoint[0], tmp_path / "nope.npy", download=False)
    with pytest.raises(MissingFileError, match="not in the cache"):
        milnce.load_model(download=False)


QUERIES = ["a red square moving", "a blue ball", "open the door", "cut tomato", "pour water into bowl",
           "the man is cooking", "green ball", "playing guitar", "car drifting", "waterfall"]


@pytest.mark.usefixtures("reuse_model")
def test_text_embedding_is_the_same_alone_and_in_a_batch(model):
    batch = model.encode_text(QUERIES).numpy()
    for i, q in enumerate(QUERIES):
        alone = model.encode_text([q]).numpy()[0]
        assert np.array_equal(alone, batch[i]), q  # bit for bit, not approximately
        assert np.array_equal(model.encode_text(q).numpy()[0], alone)
    # position in the batch and neighbours do not matter either
    shuffled = model.encode_text(QUERIES[::-1] + QUERIES[:3]).numpy()
    assert np.array_equal(shuffled[: len(QUERIES)][::-1], batch)


SRC = str(Path(__file__).resolve().parents[1] / "src")


def _env(threads: int = 1) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS=str(threads))


def test_import_milnce_does_not_import_training():
    code = "import sys, milnce, milnce.cli; milnce.cli.build_parser(); print('milnce.train' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


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


def test_unknown_word_warning_points_at_the_caller(model):
    with pytest.warns(UserWarning, match="no word in the vocabulary") as rec:
        model.encode_text(["qwxz"])
    assert rec[0].filename == __file__


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


def test_lazy_fast_path_is_usable_outside_inference_mode(checkpoint):
    model = milnce.load_model(*checkpoint, download=False)
    with torch.inference_mode():
        model.encode_video(torch.rand(1, 3, 8, 64, 64))  # first use builds it
    assert not any(p.is_inference() for p in model.video_net.parameters())
    with torch.no_grad():
        assert model(torch.rand(1, 3, 8, 64, 64))["video_embedding"].shape == (1, 512)


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
