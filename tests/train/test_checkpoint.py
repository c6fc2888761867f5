"""``milnce.train.checkpoint``: Training checkpoints."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import torch

from milnce.cli import main

pytest.importorskip("webdataset")


# ----------------------------------------------------------------------------- damaged checkpoints, full disk

@pytest.mark.slow
def test_damaged_training_checkpoints_are_refused(synth, straight, tmp_path, capsys):
    import shutil

    from milnce.train.checkpoint import latest_checkpoint

    cfg = _settings(tmp_path)

    def fresh(name: str) -> Path:
        run = tmp_path / name
        shutil.copytree(straight, run)
        return run

    run = fresh("flip")
    ck = latest_checkpoint(run)
    data = bytearray(ck.read_bytes())
    with __import__("zipfile").ZipFile(ck) as zf:
        info = max(zf.infolist(), key=lambda i: i.file_size)
    data[info.header_offset + 30 + len(info.filename) + len(info.extra) + info.file_size // 2] ^= 0x01
    ck.write_bytes(bytes(data))
    assert _train(synth, run, cfg, "--steps", "7", "--resume") == 2
    assert "damaged training checkpoint" in capsys.readouterr().err

    run = fresh("empty")
    latest_checkpoint(run).write_bytes(b"")
    assert _train(synth, run, cfg, "--steps", "7", "--resume") == 2
    assert "empty file" in capsys.readouterr().err

    for name, change in (("negative", {"step": -3}), ("shape", "shape")):
        run = fresh(name)
        ck = latest_checkpoint(run)
        obj = torch.load(ck, weights_only=True)
        if change == "shape":
            obj["state_dict"]["fc.weight"] = torch.zeros(3, 3)
        else:
            obj.update(change)
        torch.save(obj, ck)
        assert _train(synth, run, cfg, "--steps", "7", "--resume") == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and ("step must be" in err or "has shape (3, 3)" in err), err


def test_full_disk_gives_one_line_and_no_temporary_file(synth, tmp_path, capsys, monkeypatch):
    from milnce.train import checkpoint as ck

    def full(obj, f, *a, **k):
        f.write(b"PK\x03\x04")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ck.torch, "save", full)
    run = tmp_path / "run"
    assert _train(synth, run, _settings(tmp_path), "--steps", "1") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("milnce: error: cannot write the checkpoint") and "No space left" in err[-1]
    assert not list((run / "checkpoints").glob(".step_*"))

# A tiny run: 8 frames of 32 px, 2 clips per step; settings shared by every run below.
TINY = {
    "fps": 4, "num_frames": 8, "size": 32, "decode_size": 36, "min_time": 2.0, "num_candidates": 2,
    "batch_size": 2, "lr": 1e-3, "warmup_steps": 2, "schedule_steps": 6, "workers": 0,
    "eval_every": 0, "log_every": 1, "save_every": 3, "progress": False,
}


# ----------------------------------------------------------------------------- synthetic data

@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    from milnce.train import make_synthetic

    return make_synthetic(tmp_path_factory.mktemp("synth") / "data", videos=6, val_videos=2, seed=1, size=48,
                          progress=False)


# ----------------------------------------------------------------------------- runs

def _settings(tmp: Path, **extra) -> Path:
    path = tmp / "tiny.json"
    path.write_text(json.dumps({**TINY, **extra}))
    return path


THREADS = 1  # identical weights need identical thread counts (float sums are ordered per thread)


def _train(synth: Path, out: Path, cfg: Path, *more: str) -> int:
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        return main(["train", "--data", str(synth), "--out", str(out), "--config", str(cfg), *more])
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def straight(synth, tmp_path_factory) -> Path:
    """Six steps in one go."""
    tmp = tmp_path_factory.mktemp("straight")
    run = tmp / "run"
    assert _train(synth, run, _settings(tmp), "--steps", "6") == 0
    return run
