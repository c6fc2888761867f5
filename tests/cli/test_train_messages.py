"""What ``milnce train`` says: a resumed run says it resumes (not "training from scratch"), and
lines logged during a run start a line of their own instead of being glued to the progress bar."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from milnce.cli import main

TINY = {
    "fps": 4, "num_frames": 8, "size": 32, "decode_size": 36, "min_time": 2.0, "num_candidates": 2,
    "batch_size": 2, "lr": 1e-3, "warmup_steps": 1, "schedule_steps": 4, "workers": 0,
    "eval_every": 1, "eval_max": 2, "log_every": 1, "save_every": 1,
}


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    from milnce.train import make_synthetic

    return make_synthetic(tmp_path_factory.mktemp("synth") / "data", videos=2, val_videos=2, seed=1, size=32,
                          progress=False)


def _train(synth: Path, run: Path, cfg: Path, *more: str) -> int:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return main(["train", "--data", str(synth), "--out", str(run), "--config", str(cfg), *more])
    finally:
        torch.set_num_threads(before)


def test_resume_says_resuming_and_logs_above_the_bar(synth, tmp_path, capsys):
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(TINY))
    run = tmp_path / "run"
    assert _train(synth, run, cfg, "--steps", "1") == 0
    first = capsys.readouterr().err
    assert "milnce train: training from scratch" in first
    assert _train(synth, run, cfg, "--steps", "2", "--resume") == 0
    err = capsys.readouterr().err
    assert "training from scratch" not in err
    assert "milnce train: resuming from " in err and "step_00000001.pt (step 1)" in err
    # the progress bar redraws with \r; a logged line must begin after the bar was cleared
    held_out = [line for line in err.split("\n") if "held-out" in line]
    assert held_out
    for line in held_out:
        assert line.rsplit("\r", 1)[-1].startswith("step "), repr(line)
