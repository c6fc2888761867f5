"""``milnce.train.checkpoint``: Training checkpoints."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import torch

from eval_fixtures import run_train, tiny_config

pytest.importorskip("webdataset")


# ----------------------------------------------------------------------------- damaged checkpoints, full disk

@pytest.mark.slow
def test_damaged_training_checkpoints_are_refused(synth, straight, tmp_path, capsys):
    import shutil

    from milnce.train.checkpoint import latest_checkpoint

    cfg = tiny_config(tmp_path)

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
    assert run_train(synth, run, cfg, "--steps", "7", "--resume") == 2
    assert "damaged training checkpoint" in capsys.readouterr().err

    run = fresh("empty")
    latest_checkpoint(run).write_bytes(b"")
    assert run_train(synth, run, cfg, "--steps", "7", "--resume") == 2
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
        assert run_train(synth, run, cfg, "--steps", "7", "--resume") == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and ("step must be" in err or "has shape (3, 3)" in err), err


def test_full_disk_gives_one_line_and_no_temporary_file(synth, tmp_path, capsys, monkeypatch):
    from milnce.train import checkpoint as ck

    def full(obj, f, *a, **k):
        f.write(b"PK\x03\x04")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ck.torch, "save", full)
    run = tmp_path / "run"
    assert run_train(synth, run, tiny_config(tmp_path), "--steps", "1") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("milnce: error: cannot write the checkpoint") and "No space left" in err[-1]
    assert not list((run / "checkpoints").glob(".step_*"))
