"""``milnce embed-video`` end to end (``milnce.commands.video``): the CLI run through ``main(argv)`` or a
subprocess."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from eval_fixtures import final_state
from milnce.cli import main
from video_fixtures import bad_inputs, cli_inputs, clip_videos, one_line

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


@pytest.fixture(scope="session")
def inputs(tmp_path_factory):
    return cli_inputs(tmp_path_factory)  # read only


@no_cuda
def test_embed_video_on_cuda_without_cuda_is_one_line(inputs, tmp_path, capsys):
    video, wargs = inputs
    assert main(["embed-video", str(video), "--out", str(tmp_path / "out"), "--device", "cuda:0", *wargs]) == 2
    assert "CUDA is not available" in one_line(capsys)

# ``synth`` and ``straight`` (a synthetic set and a six-step run) are session fixtures of eval_fixtures.


def test_load_model_from_run_folder(straight, tmp_path):
    import milnce

    model = milnce.load_model(straight, download=False)
    ref = final_state(straight)["state_dict"]
    assert torch.equal(model.net.fc.weight, ref["fc.weight"])
    assert (model.info.fps, model.info.num_frames, model.info.size) == (4.0, 8, 32)
    assert model.encode_text(["a red square moves left"]).shape == (1, 512)
    video = next(p for p in (straight.parent.parent).rglob("train00000.mp4"))
    assert main(["embed-video", str(video), "--out", str(tmp_path / "emb"), "--weights", str(straight),
                 "--no-download", "--quiet"]) == 0
    from milnce.extract import read_feature_file

    ff = read_feature_file(tmp_path / "emb" / "train00000.npz")  # extract's format: the run's window settings
    assert ff.embeddings.shape[1] == 512 and float(ff.meta["settings"]["fps"]) == 4.0


@pytest.fixture(scope="session")
def vids(tmp_path_factory):
    return clip_videos(tmp_path_factory)  # read only


@pytest.fixture(scope="session")
def bad(tmp_path_factory):
    return bad_inputs(tmp_path_factory)  # read only


# ------------------------------------------------------------------------------ CLI


def test_cli_embed_video(checkpoint, model, vids, bad, tmp_path, capsys, monkeypatch):
    """embed-video is ``milnce extract`` with embed-video's defaults (tests/test_extract.py has the rest)."""
    from milnce.commands import extract as extract_cmd

    loaded = []
    real = extract_cmd.model_from_args
    monkeypatch.setattr(extract_cmd, "model_from_args", lambda args: loaded.append(real) or model)  # load once (fixture)
    w, v = checkpoint
    out = tmp_path / "emb"
    common = ["--out", str(out), "--weights", str(w), "--vocab", str(v), "--no-download",
              "--num-frames", "8", "--size", "32", "--stride", "8", "--quiet", "--workers", "0"]
    rc = main(["embed-video", str(vids["cfr10"]), str(bad["text"]), str(vids["short"]), "--features", *common])
    err = capsys.readouterr().err
    assert rc == 1 and "notes.mp4" in err and "1 failed" in err
    data = np.load(out / "cfr10.npz", allow_pickle=False)
    assert data["video_embedding"].shape == (5, 512) and data["video_embedding"].dtype == np.float32
    assert data["mixed_5c"].shape == (5, 1024)
    assert data["start"].tolist() == pytest.approx([0, 0.8, 1.6, 2.4, 3.2])
    assert data["end"].tolist() == pytest.approx([0.8, 1.6, 2.4, 3.2, 4.0])
    assert str(data["path"]) == str(vids["cfr10"])
    assert np.load(out / "short.npz", allow_pickle=False)["video_embedding"].shape == (1, 512)
    assert not (out / "notes.npz").exists()
    # all good -> exit 0; finished outputs (same settings) are kept unless --overwrite
    before = (out / "short.npz").stat().st_mtime_ns
    rc = main(["embed-video", str(vids["short"]), "--features", *common])
    assert rc == 0 and (out / "short.npz").stat().st_mtime_ns == before
    rc = main(["embed-video", str(vids["short"]), "--overwrite", *common])
    assert rc == 0 and len(loaded) == 3
    assert "mixed_5c" not in np.load(out / "short.npz", allow_pickle=False).files
    assert sorted(os.listdir(out)) == ["cfr10.npz", "failures.csv", "short.npz"]  # no temporary files left
    # a missing model file is a one-line error, not a traceback
    monkeypatch.setattr(extract_cmd, "model_from_args", real)
    rc = main(["embed-video", str(vids["short"]), "--out", str(tmp_path / "x"), "--weights",
               str(tmp_path / "nope.pth"), "--vocab", str(v), "--no-download"])
    assert rc == 2 and "nope.pth" in capsys.readouterr().err
