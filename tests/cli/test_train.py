"""``milnce train``, ``milnce make-synthetic`` end to end (``milnce.commands.train``): the CLI run through
``main(argv)`` or a subprocess."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from eval_fixtures import (
    SHARD_WORDS,
    THREADS,
    assert_close_state,
    assert_same_state,
    assert_same_weights,
    final_state,
    needs_webdataset,
    run_train,
    shard_after,
    subprocess_env,
    tiny_config,
    torchrun_milnce,
    train_cmd,
)
from milnce.cli import main

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


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


def test_make_synthetic_layout(tmp_path):
    from milnce.text import load_vocab
    from milnce.train.synthetic import COLOURS, DIRECTIONS, SHAPES
    from milnce.video import read_clip

    out = tmp_path / "syn"
    assert main(["make-synthetic", str(out), "--num-videos", "3", "--num-val-videos", "2", "--size", "32", "--quiet"]) == 0
    words = set(load_vocab(out / "vocab.npy").tolist())
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["hflip"] is False and meta["val_distinct_captions"] == 4
    for split, n in (("train", 3), ("val", 2)):
        with open(out / f"{split}.csv") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == n and list(rows[0]) == ["video_id", "video_path"]
        for row in rows:
            with open(out / "captions" / f"{row['video_id']}.csv") as f:
                caps = list(csv.DictReader(f))
            assert len(caps) == (4 if split == "train" else 2) and list(caps[0]) == ["start", "end", "text"]
            for c in caps:
                assert set(c["text"].split()) <= words
                assert float(c["start"]) < float(c["end"]) <= 8.0
            clip = read_clip(out / row["video_path"], 0, 2, num_windows=1, fps=4, num_frames=8, size=32)
            assert clip.frames.shape == (1, 3, 8, 32, 32)
    with open(out / "captions" / "val00000.csv") as f:
        texts = [r["text"] for r in csv.DictReader(f)]
    combos = {tuple(w for w in t.split() if w in {*COLOURS, *SHAPES, *DIRECTIONS}) for t in texts}
    assert len(combos) == 2 and len(texts) == 2  # two scenes, one caption each
    assert main(["make-synthetic", str(out), "--num-videos", "1", "--quiet"]) == 2  # not empty: refused


# ----------------------------------------------------------------------------- runs

def test_run_folder_contents(straight):
    from milnce.train.checkpoint import load_training_checkpoint

    names = sorted(p.name for p in (straight / "checkpoints").iterdir())
    assert names == ["step_00000003.pt", "step_00000006.pt"]
    cfg = json.loads((straight / "config.json").read_text())
    assert cfg["num_frames"] == 8 and cfg["schedule_steps"] == 6
    lines = [json.loads(x) for x in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if r["kind"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert all(np.isfinite(r["loss"]) and r["clips_per_s"] > 0 and 0 <= r["data_wait"] <= 1 for r in lines)
    ck = load_training_checkpoint(straight / "checkpoints" / "step_00000006.pt")  # weights_only=True
    assert set(ck) >= {"state_dict", "optimizer", "scheduler", "rng", "step", "config", "data"}
    assert ck["step"] == 6 and ck["data"]["next_sample"] == 12


@pytest.mark.slow
def test_exact_resume(synth, straight, tmp_path):
    cfg = tiny_config(tmp_path)
    run = tmp_path / "run"
    assert run_train(synth, run, cfg, "--steps", "3") == 0
    assert run_train(synth, run, cfg, "--steps", "6") == 2  # exists: needs --resume
    assert run_train(synth, run, cfg, "--steps", "6", "--resume", "--lr", "0.01") == 2  # settings differ
    assert run_train(synth, run, cfg, "--steps", "6", "--resume") == 0
    assert_same_state(final_state(run), final_state(straight))
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_no_half_written_checkpoint_is_visible(synth, straight, tmp_path, monkeypatch):
    from milnce.train import checkpoint as ck

    run = tmp_path / "run"
    shutil.copytree(straight, run)
    real_save = torch.save

    def crash(obj, f, *a, **k):  # die in the middle of writing
        f.write(b"PK\x03\x04partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(ck.torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        ck.save_checkpoint(run, 9, {"step": 9})
    monkeypatch.setattr(ck.torch, "save", real_save)
    assert ck.latest_checkpoint(run).name == "step_00000006.pt"
    import milnce

    assert milnce.load_model(run, download=False) is not None


@pytest.mark.slow
def test_kill_9_then_resume(synth, straight, tmp_path):
    from milnce.train.checkpoint import latest_checkpoint, load_training_checkpoint

    cfg = tiny_config(tmp_path, save_every=1, workers=1)
    run = tmp_path / "run"
    cmd = train_cmd(synth, run, cfg, "--steps", "6")
    proc = subprocess.Popen(cmd, env=subprocess_env(THREADS), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            last = latest_checkpoint(run)
            if last is not None and int(last.stem.split("_")[1]) >= 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        os.kill(proc.pid, signal.SIGKILL)  # in the middle of whatever it was doing
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    visible = sorted((run / "checkpoints").glob("step_*.pt"))
    assert visible
    for path in visible:  # every visible checkpoint is complete
        assert load_training_checkpoint(path)["step"] == int(path.stem.split("_")[1])
    assert run_train(synth, run, cfg, "--steps", "6", "--resume") == 0
    assert_same_state(final_state(run), final_state(straight))


@pytest.mark.slow
def test_torchrun_two_processes_equal_one_process_on_the_global_batch(synth, tmp_path):
    # In float64, so that rounding stays invisible even through BatchNorm over a few values (the
    # last stages of a 32 px clip); Adam's first step is lr * sign(grad), so a large epsilon makes
    # the update proportional to the gradient (a ~0 gradient would otherwise flip with rounding).
    cfg = tiny_config(tmp_path, batch_size=4, save_every=1, lr=1.0, adam_eps=1.0, warmup_steps=0, precision="fp64")
    one, two = tmp_path / "one", tmp_path / "two"
    assert run_train(synth, one, cfg, "--steps", "1") == 0
    launcher = torchrun_milnce()
    res = subprocess.run([*launcher, "train", "--data", str(synth), "--out", str(two), "--config", str(cfg),
                          "--steps", "1", "--sync-bn"], env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    a, b = final_state(one), final_state(two)
    assert b["world_size"] == 2 and a["world_size"] == 1
    before = load_initial(synth, cfg, tmp_path)
    moved = 0
    for k, v in a["state_dict"].items():
        w = b["state_dict"][k]
        if v.is_floating_point():
            torch.testing.assert_close(w, v, rtol=1e-6, atol=1e-7, msg=k)  # steps move weights by ~1
            moved += int((v - before[k]).abs().max() > 1e-3)
        else:
            assert torch.equal(v, w), k
    assert moved > 100  # the step changed the weights


def load_initial(synth: Path, cfg: Path, tmp: Path) -> dict[str, torch.Tensor]:
    """Weights before any step (a run of zero steps)."""
    run = tmp / "zero"
    assert run_train(synth, run, cfg, "--steps", "0") == 0
    return final_state(run)["state_dict"]


def test_train_errors_are_one_line(synth, tmp_path, capsys):
    cfg = tiny_config(tmp_path)
    assert main(["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "r"), "--config", str(cfg)]) == 2
    assert "not found" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: 3\nbogus: 1\n")
    assert main(["train", "--data", str(synth), "--out", str(tmp_path / "r"), "--config", str(bad)]) == 2
    assert "unknown setting 'bogus'" in capsys.readouterr().err
    assert main(["train", "--data", str(synth), "--out", str(tmp_path / "r"), "--config", str(cfg),
                 "--batch-size", "3", "--grad-accum", "2"]) == 2
    assert "multiple of grad_accum" in capsys.readouterr().err


@needs_webdataset
@pytest.mark.slow
def test_micro_batch_and_torchrun_agree_in_float64(synth, tmp_path):
    # lr 1 and three steps: any float32 rounding on one path (1e-7) would show far above 1e-10;
    # the same thread count on both sides (torchrun sets OMP_NUM_THREADS=1 per process)
    cfg = tiny_config(tmp_path, batch_size=8, lr=1.0, adam_eps=1.0, warmup_steps=0, precision="fp64",
                    save_every=3, threads=1)
    one, two = tmp_path / "cached", tmp_path / "ddp"
    assert run_train(synth, one, cfg, "--steps", "3", "--micro-batch", "4") == 0
    launcher = torchrun_milnce()
    res = subprocess.run([*launcher, "train", "--data", str(synth), "--out", str(two), "--config", str(cfg),
                          "--steps", "3"], env=subprocess_env(), capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stderr[-3000:]
    a, b = final_state(one), final_state(two)
    assert a["world_size"] == 1 and b["world_size"] == 2
    assert all(v.dtype.is_floating_point is False or str(v.dtype) == "torch.float64"
               for k, v in a["state_dict"].items() if "num_batches" not in k)
    # BN running statistics differ by design (DDP keeps rank 0's; the cached step folds in both)
    assert_close_state(a, b, rel=1e-10, buffers=False)


EXACT = {"batch_size": 4, "lr": 1.0, "adam_eps": 1.0, "warmup_steps": 0, "precision": "fp64", "save_every": 3}


@needs_webdataset
@pytest.mark.slow
def test_micro_batch_equals_a_full_batch_step_with_frozen_bn(synth, tmp_path):
    cfg = tiny_config(tmp_path, **EXACT, freeze_bn=True)
    assert run_train(synth, tmp_path / "full", cfg, "--steps", "2") == 0
    assert run_train(synth, tmp_path / "cached", cfg, "--steps", "2", "--micro-batch", "2") == 0
    assert_close_state(final_state(tmp_path / "full"), final_state(tmp_path / "cached"))


@needs_webdataset
def test_micro_batch_refusals(synth, tmp_path, capsys):
    cfg = tiny_config(tmp_path)
    out = tmp_path / "r"
    assert run_train(synth, out, cfg, "--batch-size", "4", "--micro-batch", "3") == 2
    assert "must divide" in capsys.readouterr().err
    assert run_train(synth, out, cfg, "--batch-size", "4", "--micro-batch", "2", "--grad-accum", "2") == 2
    assert "cannot be combined" in capsys.readouterr().err
    assert run_train(synth, out, cfg, "--batch-size", "1") == 2
    err = capsys.readouterr().err
    assert "batch-norm needs at least 2 clips" in err and len(err.strip().splitlines()) == 1


@needs_webdataset
@pytest.mark.slow
def test_micro_batch_equals_torchrun_of_b_over_m_processes(synth, tmp_path):
    cfg = tiny_config(tmp_path, **EXACT)
    one, two = tmp_path / "cached", tmp_path / "ddp"
    assert run_train(synth, one, cfg, "--steps", "2", "--micro-batch", "2") == 0
    launcher = torchrun_milnce()
    res = subprocess.run([*launcher, "train", "--data", str(synth), "--out", str(two), "--config", str(cfg),
                          "--steps", "2"], env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    # BN running statistics differ by design (DDP keeps rank 0's; the cached step folds in both)
    assert_close_state(final_state(one), final_state(two), buffers=False)


# ----------------------------------------------------------------------------- extensible runs

@pytest.mark.slow
@needs_webdataset
def test_extending_a_run_past_its_horizon(synth, tmp_path, capsys):
    cfg = tiny_config(tmp_path, schedule_steps=None, save_every=2)
    run = tmp_path / "run"
    assert run_train(synth, run, cfg, "--steps", "2") == 0
    capsys.readouterr()
    assert run_train(synth, run, cfg, "--steps", "3", "--resume") == 0
    assert "goes past the cosine horizon of 2 steps" in capsys.readouterr().err
    assert run_train(synth, run, cfg, "--steps", "4", "--resume", "--schedule-steps", "8") == 0
    assert "cosine horizon changes from 2 to 8" in capsys.readouterr().err
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    sched = [r for r in recs if r["kind"] == "schedule"]
    assert len(sched) == 1 and sched[0]["step"] == 3 and sched[0]["schedule_steps"] == 8
    assert sched[0]["previous_schedule_steps"] == 2 and sched[0]["lr_before"] == 0.0 and sched[0]["lr_after"] > 0
    train = [r for r in recs if r["kind"] == "train"]
    assert train[2]["lr"] == 0.0 and train[3]["lr"] > 0 and train[3]["schedule_steps"] == 8
    assert json.loads((run / "config.json").read_text())["schedule_steps"] == 8


@needs_webdataset
def test_non_utf8_yaml_config(synth, tmp_path, capsys):
    bad = tmp_path / "c.yaml"
    bad.write_bytes(b"steps: 3\nlr: \xff\xfe\n")
    assert main(["train", "--data", str(synth), "--out", str(tmp_path / "r"), "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "not a UTF-8 text file" in err and len(err.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def wds_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wds") / "data"
    assert main(["make-synthetic", str(out), "--num-videos", "6", "--num-val-videos", "2", "--size", "48", "--seed", "1",
                 "--format", "wds", "--videos-per-shard", "2", "--quiet"]) == 0
    return out


@needs_webdataset
def test_shard_streams_split_and_resume(wds_data, capsys):
    from milnce.text import Tokenizer
    from milnce.train.loaders import find_data
    from milnce.train.shards import ShardClips, ShardSet

    shards, val, meta = find_data(str(wds_data), None)
    assert isinstance(shards, ShardSet) and len(shards.urls) == 3 and val is not None and meta["format"] == "wds"
    tok = Tokenizer.from_file(wds_data / "vocab.npy")
    from milnce.windows import WindowSettings

    w = WindowSettings(fps=4, num_frames=8, size=32)
    kw = {"seed": 0, "decode_size": 36, "min_time": 2.0, "num_candidates": 2, "hflip": False}

    def take(rank: int, world: int, n: int, resume=None) -> list:
        it = iter(ShardClips(shards, tok, w, rank=rank, world=world, resume=resume, **kw))
        return [next(it) for _ in range(n)]

    one = take(0, 1, 8)  # 6 records an epoch, then the next epoch in another shard order
    assert [x[2]["pos"] for x in one] == [1, 2, 3, 4, 5, 6, 1, 2] and [x[2]["epoch"] for x in one][-1] == 1
    r0, r1 = take(0, 3, 2), take(1, 3, 2)  # 3 processes: one shard each, none shared
    keys = {bytes(x[0].numpy().tobytes()) for x in r0} & {bytes(x[0].numpy().tobytes()) for x in r1}
    assert not keys
    assert main(["train", "--data", str(wds_data), "--out", str(wds_data.parent / "r"), "--workers", "4"]) == 2
    assert "3 shard(s) cannot feed 1 process(es) x 4 loader worker(s)" in capsys.readouterr().err
    again = take(0, 1, 3, resume={"0": [0, 5]})  # resume after 5 records: record 6, then epoch 1
    assert torch.equal(again[0][0], one[5][0]) and torch.equal(again[1][0], one[6][0])


def _write_bad_shard(path: Path, good: Path) -> None:
    """One good record, then: no video, start > end, a video that does not decode."""
    with tarfile.open(good) as tf:
        members = {m.name: tf.extractfile(m).read() for m in tf.getmembers()}
    key = sorted(members)[0].split(".")[0]
    with tarfile.open(path, "w") as tf:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))

        add(f"{key}.json", members[f"{key}.json"])
        add(f"{key}.mp4", members[f"{key}.mp4"])
        add("novideo.json", json.dumps([{"start": 0, "end": 2, "text": "a red square"}]).encode())
        add("backwards.json", json.dumps([{"start": 5, "end": 1, "text": "a red square"}]).encode())
        add("backwards.mp4", members[f"{key}.mp4"])
        add("garbage.txt", b"a blue circle")
        add("garbage.mp4", b"\x00" * 4000)


@needs_webdataset
def test_bad_samples_are_counted_and_the_stop_rule_is_collective(wds_data, tmp_path, capsys):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(wds_data, data)
    shards = sorted((data / "shards").glob("*.tar"))
    _write_bad_shard(shards[1], shards[0])
    truncated = shards[2].read_bytes()
    shards[2].write_bytes(truncated[: len(truncated) // 2])
    cfg = tiny_config(tmp_path, eval_every=0, save_every=0)
    run = tmp_path / "run"
    assert run_train(data, run, cfg, "--steps", "4", "--bad-fraction", "0.9") == 0
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    bad = [r["sample"] for r in recs if r["kind"] == "bad_sample"]
    assert any("novideo" in b and "no video" in b for b in bad), bad
    assert any("backwards" in b and "before it starts" in b for b in bad)
    assert any("garbage" in b for b in bad) and any("truncated" in b for b in bad)
    assert sum(r["bad_samples"] for r in recs if r["kind"] == "train") == len(bad)
    assert "unreadable sample(s) skipped" in capsys.readouterr().err
    assert run_train(data, tmp_path / "strict", cfg, "--steps", "4", "--bad-fraction", "0.05", "--bad-window", "2") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("milnce: error: step") and "more than --bad-fraction 0.05" in err[-1]


@needs_webdataset
@pytest.mark.slow
def test_training_on_shards_resumes_exactly(wds_data, tmp_path):
    cfg = tiny_config(tmp_path, save_every=2, workers=1, eval_every=0)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert run_train(wds_data, straight, cfg, "--steps", "4") == 0
    assert run_train(wds_data, resumed, cfg, "--steps", "2") == 0
    assert final_state(resumed)["data"]["streams"] == {"0": [0, 4]}
    assert run_train(wds_data, resumed, cfg, "--steps", "4", "--resume") == 0
    assert_same_weights(final_state(straight), final_state(resumed))


@needs_webdataset
@pytest.mark.slow
def test_torchrun_on_shards_stops_collectively(wds_data, tmp_path):
    """Two processes on shards, one of them damaged: the stop decision is taken by both ranks
    (counts all-reduced), so neither waits in a collective until a timeout; a tolerant run ends."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(wds_data, data)
    shards = sorted((data / "shards").glob("*.tar"))
    _write_bad_shard(shards[1], shards[0])
    cfg = tiny_config(tmp_path, eval_every=0, save_every=0, batch_size=4)
    launcher = torchrun_milnce()
    base = [*launcher, "train", "--data", str(data), "--config", str(cfg), "--steps", "3"]
    strict = subprocess.run([*base, "--out", str(tmp_path / "strict"), "--bad-fraction", "0", "--bad-window", "1"],
                            env=subprocess_env(), capture_output=True, text=True, timeout=240)
    assert strict.returncode != 0
    assert strict.stderr.count("more than --bad-fraction 0") == 2, strict.stderr[-3000:]  # both ranks decided
    ok = subprocess.run([*base, "--out", str(tmp_path / "ok"), "--bad-fraction", "0.9"],
                        env=subprocess_env(), capture_output=True, text=True, timeout=240)
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert json.loads(ok.stdout.strip().splitlines()[-1])["bad_samples"] >= 3


@needs_webdataset
@pytest.mark.slow
def test_micro_batch_resumes_exactly(synth, tmp_path):
    cfg = tiny_config(tmp_path, batch_size=4, save_every=2)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert run_train(synth, straight, cfg, "--steps", "3", "--micro-batch", "2") == 0
    assert run_train(synth, resumed, cfg, "--steps", "2", "--micro-batch", "2") == 0
    assert run_train(synth, resumed, cfg, "--steps", "3", "--resume") == 0
    assert_same_weights(final_state(straight), final_state(resumed))


@needs_webdataset
@pytest.mark.slow
def test_micro_batch_under_torchrun_equals_one_process(synth, tmp_path):
    cfg = tiny_config(tmp_path, **{**EXACT, "batch_size": 8})
    one, two = tmp_path / "one", tmp_path / "two"
    assert run_train(synth, one, cfg, "--steps", "2", "--micro-batch", "2") == 0
    launcher = torchrun_milnce()
    res = subprocess.run([*launcher, "train", "--data", str(synth), "--out", str(two), "--config", str(cfg),
                          "--steps", "2", "--micro-batch", "2"], env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    # the same arithmetic but the 4 micro-batch gradients are summed as ((a+b)+c)+d on one process and
    # (a+b)+(c+d) over two: float64 rounding, grown by the second step of a run at lr 1
    assert_close_state(final_state(one), final_state(two), rel=1e-8, buffers=False)


# ----------------------------------------------------------------------------- messages

MESSAGES = {
    "fps": 4, "num_frames": 8, "size": 32, "decode_size": 36, "min_time": 2.0, "num_candidates": 2,
    "batch_size": 2, "lr": 1e-3, "warmup_steps": 1, "schedule_steps": 4, "workers": 0,
    "eval_every": 1, "eval_max": 2, "log_every": 1, "save_every": 1,
}


@pytest.mark.slow
def test_resume_says_resuming_and_logs_above_the_bar(synth, tmp_path, capsys):
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(MESSAGES))
    run = tmp_path / "run"
    assert run_train(synth, run, cfg, "--steps", "1") == 0
    first = capsys.readouterr().err
    assert "milnce train: training from scratch" in first
    assert run_train(synth, run, cfg, "--steps", "2", "--resume") == 0
    err = capsys.readouterr().err
    assert "training from scratch" not in err
    assert "milnce train: resuming from " in err and "step_00000001.pt (step 1)" in err
    # the progress bar redraws with \r; a logged line must begin after the bar was cleared
    held_out = [line for line in err.split("\n") if "held-out" in line]
    assert held_out
    for line in held_out:
        assert line.rsplit("\r", 1)[-1].startswith("step "), repr(line)


@needs_webdataset
def test_training_on_a_shard_with_a_deeply_nested_json_counts_it(tmp_path, capsys):
    tar = shard_after(tmp_path / "s.tar", {"deep.json": b"[" * 100000 + b"]" * 100000, "deep.mp4": b"\x00" * 100})
    np.save(tmp_path / "vocab.npy", np.asarray(SHARD_WORDS, dtype=str), allow_pickle=False)
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps({"fps": 4, "num_frames": 8, "size": 32, "decode_size": 36, "min_time": 2.0,
                               "num_candidates": 1, "batch_size": 2, "workers": 0, "eval_every": 0,
                               "save_every": 0, "progress": False, "bad_fraction": 0.5, "threads": 1}))
    run = tmp_path / "run"
    assert main(["train", "--data", str(tar), "--vocab", str(tmp_path / "vocab.npy"), "--out", str(run),
                 "--config", str(cfg), "--steps", "1"]) == 0
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    bad = [r["sample"] for r in recs if r["kind"] == "bad_sample"]
    assert len(bad) == 1 and "deep" in bad[0] and "not JSON" in bad[0]
    assert "1 unreadable sample(s) skipped" in capsys.readouterr().err
