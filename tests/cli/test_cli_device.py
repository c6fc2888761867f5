"""``--device cuda:0`` on a machine without CUDA: one line ("CUDA is not available ...") and exit 2
from extract, embed-video and train (the one place devices are resolved: ``api.check_device``)."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import write_checkpoint
from milnce.cli import main
from video_fixtures import make_video

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.fixture
def inputs(tmp_path):
    video = make_video(tmp_path / "v.mp4", n=8)
    weights, vocab = write_checkpoint(tmp_path / "ckpt")
    return video, ["--weights", str(weights), "--vocab", str(vocab), "--no-download"]


@no_cuda
@pytest.mark.parametrize("device", ["cuda:0", "cuda"])
def test_extract_on_cuda_without_cuda_is_one_line(inputs, tmp_path, capsys, device):
    video, wargs = inputs
    assert main(["extract", str(video), "--out", str(tmp_path / "out"), "--device", device, *wargs]) == 2
    line = _one_line(capsys)
    assert line.startswith("milnce: error:") and "CUDA is not available" in line
    assert not (tmp_path / "out").exists()


@no_cuda
def test_embed_video_on_cuda_without_cuda_is_one_line(inputs, tmp_path, capsys):
    video, wargs = inputs
    assert main(["embed-video", str(video), "--out", str(tmp_path / "out"), "--device", "cuda:0", *wargs]) == 2
    assert "CUDA is not available" in _one_line(capsys)


@no_cuda
def test_train_on_cuda_without_cuda_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps({"fps": 4, "num_frames": 8, "size": 32, "batch_size": 2, "workers": 0,
                               "eval_every": 0, "progress": False}))
    assert main(["train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--config", str(cfg),
                 "--device", "cuda:0", "--steps", "1"]) == 2
    assert "CUDA is not available" in _one_line(capsys)
    assert not (tmp_path / "run").exists()


def test_check_device_resolves_a_ranks_gpu(monkeypatch):
    from milnce.api import check_device
    from milnce.errors import UsageError

    assert check_device("cpu", local_rank=3) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert check_device("cuda", local_rank=1) == torch.device("cuda", 1)
    assert check_device("cuda:0", local_rank=1) == torch.device("cuda", 0)
    with pytest.raises(UsageError, match="has 2 GPU"):
        check_device("cuda", local_rank=2)
