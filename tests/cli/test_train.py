"""Training: MIL-NCE loss, synthetic data, exact resume, kill -9, DDP equivalence, load_model(RUN)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from milnce.cli import main

SRC = str(Path(__file__).resolve().parents[2] / "src")

# A tiny run: 8 frames of 32 px, 2 clips per step; settings shared by every run below.
TINY = {
    "fps": 4, "num_frames": 8, "size": 32, "decode_size": 36, "min_time": 2.0, "num_candidates": 2,
    "batch_size": 2, "lr": 1e-3, "warmup_steps": 2, "schedule_steps": 6, "workers": 0,
    "eval_every": 0, "log_every": 1, "save_every": 3, "progress": False,
}


def naive_milnce(v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The public MILNCELoss formula, one element at a time."""
    b, k = v.shape[0], t.shape[0] // v.shape[0]
    total = v.new_zeros(())
    for i in range(b):
        num = v.new_zeros(())
        den = v.new_zeros(())
        for c in range(k):
            num = num + torch.exp(v[i] @ t[i * k + c])
        for j in range(b):
            for c in range(k):
                den = den + torch.exp(v[i] @ t[j * k + c])  # S[i, j, c]
                den = den + torch.exp(v[j] @ t[i * k + c])  # S[j, i, c]
        total = total + torch.log(den) - torch.log(num)
    return total / b


@pytest.mark.parametrize("b,k", [(1, 1), (3, 2), (4, 5)])
def test_loss_value_and_gradients_match_naive_loop(b, k):
    from milnce.train import milnce_loss

    g = torch.Generator().manual_seed(b * 10 + k)
    v = torch.randn(b, 6, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(b * k, 6, generator=g, dtype=torch.float64, requires_grad=True)
    ours = milnce_loss(v, t)
    ref = naive_milnce(v, t)
    gv, gt = torch.autograd.grad(ours, (v, t))
    rv, rt = torch.autograd.grad(ref, (v, t))
    assert ours.dtype == torch.float64
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gv, rv, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gt, rt, rtol=1e-10, atol=1e-12)


def test_loss_is_stable_and_checks_shapes():
    from milnce.errors import UsageError
    from milnce.train import milnce_loss

    v = torch.randn(4, 8) * 100
    t = torch.randn(8, 8) * 100
    loss = milnce_loss(v, t)  # logits ~1e4: a naive exp overflows
    assert torch.isfinite(loss) and loss >= 0
    assert milnce_loss(v.half(), t.half()).dtype == torch.float32
    with pytest.raises(UsageError, match="B\\*K rows"):
        milnce_loss(v, t[:7])
    with pytest.raises(UsageError, match="sizes differ"):
        milnce_loss(v, t[:, :4])


def test_retrieval_metrics_count_ties_against_the_model():
    from milnce.train import retrieval_metrics

    m = retrieval_metrics(torch.ones(10, 4), torch.ones(10, 4))  # collapsed embeddings
    assert m["R@1"] == 0 and m["median_rank"] == 10 and m["chance_R@1"] == 10
    eye = torch.eye(10)
    assert retrieval_metrics(eye, eye)["R@1"] == 100


def test_schedule_and_batches():
    from milnce.train.config import TrainConfig
    from milnce.train.data import StepBatchSampler
    from milnce.train.trainer import lr_at

    cfg = TrainConfig(data="x", lr=1e-3, warmup_steps=4, steps=20, schedule_steps=20)
    lrs = [lr_at(s, cfg) for s in range(20)]
    assert lrs[:4] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:])) and lrs[-1] < 1e-4
    one = list(StepBatchSampler(0, 3, 4, 2, 0, 1))
    two = [list(StepBatchSampler(0, 3, 2, 2, r, 2)) for r in range(2)]
    assert [a + b for a, b in zip(*two)] == one  # ranks split each global micro-batch in order
    assert list(StepBatchSampler(1, 3, 4, 2, 0, 1)) == one[2:]  # resume skips exactly


# ----------------------------------------------------------------------------- synthetic data

@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    from milnce.train import make_synthetic

    return make_synthetic(tmp_path_factory.mktemp("synth") / "data", videos=6, val_videos=2, seed=1, size=48,
                          progress=False)


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


def test_training_samples_are_reproducible(synth):
    from milnce.text import Tokenizer, load_vocab
    from milnce.train.data import TrainClips
    from milnce.train.loaders import find_data
    from milnce.windows import WindowSettings

    split, val, meta = find_data(str(synth), None)
    assert val is not None and meta["hflip"] is False
    ds = TrainClips(split, Tokenizer(load_vocab(synth / "vocab.npy")), WindowSettings(fps=4, num_frames=8, size=32),
                    seed=3, decode_size=40, min_time=2.0, num_candidates=3, hflip=True)
    clip, ids, info = ds[7]
    assert clip.shape == (3, 8, 32, 32) and clip.dtype == torch.uint8 and ids.shape == (3, 16)
    assert info == {"bad": 0, "failed": 0, "notes": ""}
    again, ids2, _ = ds[7]
    assert torch.equal(clip, again) and torch.equal(ids, ids2)
    assert sorted(int(ds.order(0)[i]) for i in range(len(ds))) == list(range(len(ds)))


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


def _final(run: Path) -> dict:
    from milnce.train.checkpoint import latest_checkpoint, load_training_checkpoint

    return load_training_checkpoint(latest_checkpoint(run))


def _assert_same_state(a: dict, b: dict) -> None:
    assert a["step"] == b["step"]
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), k
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        for k in sa[i]:
            assert torch.equal(sa[i][k], sb[i][k]), (i, k)


@pytest.fixture(scope="module")
def straight(synth, tmp_path_factory) -> Path:
    """Six steps in one go."""
    tmp = tmp_path_factory.mktemp("straight")
    run = tmp / "run"
    assert _train(synth, run, _settings(tmp), "--steps", "6") == 0
    return run


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


def test_exact_resume(synth, straight, tmp_path):
    cfg = _settings(tmp_path)
    run = tmp_path / "run"
    assert _train(synth, run, cfg, "--steps", "3") == 0
    assert _train(synth, run, cfg, "--steps", "6") == 2  # exists: needs --resume
    assert _train(synth, run, cfg, "--steps", "6", "--resume", "--lr", "0.01") == 2  # settings differ
    assert _train(synth, run, cfg, "--steps", "6", "--resume") == 0
    _assert_same_state(_final(run), _final(straight))
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_load_model_from_run_folder(straight, tmp_path):
    import milnce

    model = milnce.load_model(straight, download=False)
    ref = _final(straight)["state_dict"]
    assert torch.equal(model.net.fc.weight, ref["fc.weight"])
    assert (model.info.fps, model.info.num_frames, model.info.size) == (4.0, 8, 32)
    assert model.encode_text(["a red square moves left"]).shape == (1, 512)
    video = next(p for p in (straight.parent.parent).rglob("train00000.mp4"))
    assert main(["embed-video", str(video), "--out", str(tmp_path / "emb"), "--weights", str(straight),
                 "--no-download", "--quiet"]) == 0
    from milnce.extract import read_feature_file

    ff = read_feature_file(tmp_path / "emb" / "train00000.npz")  # extract's format: the run's window settings
    assert ff.video_embedding.shape[1] == 512 and float(ff.meta["settings"]["fps"]) == 4.0


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


def _milnce_cmd() -> list[str]:
    exe = Path(sys.executable).parent / "milnce"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "milnce.cli"]


def _env(threads: int = 1) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS=str(threads))


@pytest.mark.slow
def test_kill_9_then_resume(synth, straight, tmp_path):
    from milnce.train.checkpoint import latest_checkpoint, load_training_checkpoint

    cfg = _settings(tmp_path, save_every=1, workers=1)
    run = tmp_path / "run"
    cmd = [*_milnce_cmd(), "train", "--data", str(synth), "--out", str(run), "--config", str(cfg), "--steps", "6"]
    proc = subprocess.Popen(cmd, env=_env(THREADS), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
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
    assert _train(synth, run, cfg, "--steps", "6", "--resume") == 0
    _assert_same_state(_final(run), _final(straight))


@pytest.mark.slow
def test_torchrun_two_processes_equal_one_process_on_the_global_batch(synth, tmp_path):
    # In float64, so that rounding stays invisible even through BatchNorm over a few values (the
    # last stages of a 32 px clip); Adam's first step is lr * sign(grad), so a large epsilon makes
    # the update proportional to the gradient (a ~0 gradient would otherwise flip with rounding).
    cfg = _settings(tmp_path, batch_size=4, save_every=1, lr=1.0, adam_eps=1.0, warmup_steps=0, precision="fp64")
    one, two = tmp_path / "one", tmp_path / "two"
    assert _train(synth, one, cfg, "--steps", "1") == 0
    exe = Path(sys.executable).parent / "milnce"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    launcher += ["--no-python", str(exe)] if exe.exists() else ["-m", "milnce.cli"]
    res = subprocess.run([*launcher, "train", "--data", str(synth), "--out", str(two), "--config", str(cfg),
                          "--steps", "1", "--sync-bn"], env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    a, b = _final(one), _final(two)
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
    assert _train(synth, run, cfg, "--steps", "0") == 0
    return _final(run)["state_dict"]


def test_train_errors_are_one_line(synth, tmp_path, capsys):
    cfg = _settings(tmp_path)
    assert main(["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "r"), "--config", str(cfg)]) == 2
    assert "not found" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: 3\nbogus: 1\n")
    assert main(["train", "--data", str(synth), "--out", str(tmp_path / "r"), "--config", str(bad)]) == 2
    assert "unknown setting 'bogus'" in capsys.readouterr().err
    assert main(["train", "--data", str(synth), "--out", str(tmp_path / "r"), "--config", str(cfg),
                 "--batch-size", "3", "--grad-accum", "2"]) == 2
    assert "multiple of grad_accum" in capsys.readouterr().err


def test_import_milnce_does_not_import_training():
    code = "import sys, milnce, milnce.cli; milnce.cli.build_parser(); print('milnce.train' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_gradient_accumulation_run(synth, tmp_path):
    # (bf16 autocast on the CPU turns temporal-conv weights NaN in the first step here: the run
    # now stops with a TrainingError naming them instead of reporting garbage metrics)
    cfg = _settings(tmp_path, batch_size=4, grad_accum=2, workers=1, eval_every=1)
    assert _train(synth, tmp_path / "run", cfg, "--steps", "1") == 0
    recs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in recs] == ["eval", "train", "eval"]
    assert np.isfinite(recs[1]["loss"]) and recs[2]["n"] == 4 and recs[2]["chance_R@1"] == 25
