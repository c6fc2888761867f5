"""Training at scale: gradient caching (exact), extensible runs, tar shards, bad samples, divergence
and damaged checkpoints."""

from __future__ import annotations

import errno
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from torch import nn

from milnce.cli import main
from tests.cli import test_train as test_train
from tests.cli.test_train import _env, _final, _settings, _train

synth = test_train.synth  # the same module-scoped fixtures
straight = test_train.straight

pytest.importorskip("webdataset")


# ----------------------------------------------------------------------------- gradient caching

class _Tiny(nn.Module):
    """A two-tower toy with batch-norm, in float64: (video, ids) -> (V, T)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm3d(4)
        self.fc = nn.Linear(4, 5)
        self.words = nn.Embedding(20, 5)

    def forward(self, video: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.relu(self.bn(self.conv(video))).mean(dim=(2, 3, 4))
        return self.fc(x), self.words(ids).mean(dim=1)


def test_cached_step_is_exactly_the_step_of_b_over_m_processes():
    from milnce.train.loss import milnce_loss
    from milnce.train.step import cached_step

    torch.manual_seed(0)
    a = _Tiny().double().train()
    b = _Tiny().double().train()
    b.load_state_dict(a.state_dict())
    clips = torch.randint(0, 256, (6, 3, 2, 4, 4), dtype=torch.uint8)
    ids = torch.randint(1, 20, (6, 2, 3))
    loss = cached_step(a, a, clips, ids, 2, dtype=torch.float64, autocast=_null, scaler=_NoScale(), distributed=False)
    # reference: what a torchrun job of 3 processes x 2 clips computes (each rank's own BN
    # statistics, embeddings gathered, one loss over the global batch), written out plainly
    vs, ts = [], []
    for r in range(3):
        v, t = b(clips[2 * r:2 * r + 2].double() / 255, ids[2 * r:2 * r + 2].reshape(-1, 3))
        vs.append(v)
        ts.append(t)
    ref = milnce_loss(torch.cat(vs), torch.cat(ts))
    ref.backward()
    assert loss == pytest.approx(float(ref.detach()), rel=1e-12)
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-14, msg=name)
    # running statistics: updated once per micro-batch (pass 2 does not fold them in again)
    assert int(a.bn.num_batches_tracked) == 3
    torch.testing.assert_close(a.bn.running_mean, b.bn.running_mean, rtol=1e-12, atol=0)
    torch.testing.assert_close(a.bn.running_var, b.bn.running_var, rtol=1e-12, atol=0)


def _null():
    import contextlib

    return contextlib.nullcontext()


class _NoScale:
    def scale(self, x):
        return x


def _assert_close_state(a: dict, b: dict, rel: float = 1e-10, buffers: bool = True) -> None:
    assert a["step"] == b["step"]
    for k, v in a["state_dict"].items():
        if not buffers and ("running_" in k or "num_batches" in k):
            continue
        w = b["state_dict"][k]
        if v.is_floating_point():
            scale = max(float(v.abs().max()), 1e-30)
            assert float((v - w).abs().max()) <= rel * scale, k
        else:
            assert torch.equal(v, w), k
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        for k in sa[i]:
            x, y = sa[i][k].double(), sb[i][k].double()
            assert float((x - y).abs().max()) <= rel * max(float(x.abs().max()), 1e-30), (i, k)


EXACT = {"batch_size": 4, "lr": 1.0, "adam_eps": 1.0, "warmup_steps": 0, "precision": "fp64", "save_every": 3}


@pytest.mark.slow
def test_micro_batch_equals_a_full_batch_step_with_frozen_bn(synth, tmp_path):
    cfg = _settings(tmp_path, **EXACT, freeze_bn=True)
    assert _train(synth, tmp_path / "full", cfg, "--steps", "2") == 0
    assert _train(synth, tmp_path / "cached", cfg, "--steps", "2", "--micro-batch", "2") == 0
    _assert_close_state(_final(tmp_path / "full"), _final(tmp_path / "cached"))


def test_micro_batch_refusals(synth, tmp_path, capsys):
    cfg = _settings(tmp_path)
    out = tmp_path / "r"
    assert _train(synth, out, cfg, "--batch-size", "4", "--micro-batch", "3") == 2
    assert "must divide" in capsys.readouterr().err
    assert _train(synth, out, cfg, "--batch-size", "4", "--micro-batch", "2", "--grad-accum", "2") == 2
    assert "cannot be combined" in capsys.readouterr().err
    assert _train(synth, out, cfg, "--batch-size", "1") == 2
    err = capsys.readouterr().err
    assert "batch-norm needs at least 2 clips" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_micro_batch_equals_torchrun_of_b_over_m_processes(synth, tmp_path):
    cfg = _settings(tmp_path, **EXACT)
    one, two = tmp_path / "cached", tmp_path / "ddp"
    assert _train(synth, one, cfg, "--steps", "2", "--micro-batch", "2") == 0
    exe = Path(sys.executable).parent / "milnce"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    launcher += ["--no-python", str(exe)] if exe.exists() else ["-m", "milnce.cli"]
    res = subprocess.run([*launcher, "train", "--data", str(synth), "--out", str(two), "--config", str(cfg),
                          "--steps", "2"], env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    # BN running statistics differ by design (DDP keeps rank 0's; the cached step folds in both)
    _assert_close_state(_final(one), _final(two), buffers=False)


# ----------------------------------------------------------------------------- extensible runs

def test_extending_a_run_past_its_horizon(synth, tmp_path, capsys):
    cfg = _settings(tmp_path, schedule_steps=None, save_every=2)
    run = tmp_path / "run"
    assert _train(synth, run, cfg, "--steps", "2") == 0
    capsys.readouterr()
    assert _train(synth, run, cfg, "--steps", "3", "--resume") == 0
    assert "goes past the cosine horizon of 2 steps" in capsys.readouterr().err
    assert _train(synth, run, cfg, "--steps", "4", "--resume", "--schedule-steps", "8") == 0
    assert "cosine horizon changes from 2 to 8" in capsys.readouterr().err
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    sched = [r for r in recs if r["kind"] == "schedule"]
    assert len(sched) == 1 and sched[0]["step"] == 3 and sched[0]["schedule_steps"] == 8
    assert sched[0]["previous_schedule_steps"] == 2 and sched[0]["lr_before"] == 0.0 and sched[0]["lr_after"] > 0
    train = [r for r in recs if r["kind"] == "train"]
    assert train[2]["lr"] == 0.0 and train[3]["lr"] > 0 and train[3]["schedule_steps"] == 8
    assert json.loads((run / "config.json").read_text())["schedule_steps"] == 8


# ----------------------------------------------------------------------------- divergence

def test_retrieval_metrics_rank_non_finite_scores_last():
    from milnce.train import retrieval_metrics

    eye = torch.eye(4)
    nan = torch.full((4, 4), float("nan"))
    m = retrieval_metrics(nan, nan)
    assert m["R@1"] == 0 and m["median_rank"] == 4
    v = eye.clone()
    v[2, 0] = float("inf")  # one video's embedding broken: its score is inf for every text
    m = retrieval_metrics(eye, v)
    assert m["R@1"] < 100


def test_a_diverged_run_stops_with_a_training_error(synth, tmp_path, capsys):
    cfg = _settings(tmp_path, warmup_steps=0, eval_every=1)
    assert _train(synth, tmp_path / "run", cfg, "--steps", "2", "--lr", "1e6") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("milnce: error:") and "NaN or infinite" in err[-1], err[-3:]
    from milnce.errors import TrainingError
    from milnce.train.step import check_finite

    net = nn.BatchNorm1d(2)
    net.running_var[0] = float("nan")
    with pytest.raises(TrainingError, match="batch-norm running statistic running_var"):
        check_finite(net, 5)
    assert issubclass(TrainingError, RuntimeError)


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


def test_non_utf8_yaml_config(synth, tmp_path, capsys):
    bad = tmp_path / "c.yaml"
    bad.write_bytes(b"steps: 3\nlr: \xff\xfe\n")
    assert main(["train", "--data", str(synth), "--out", str(tmp_path / "r"), "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "not a UTF-8 text file" in err and len(err.strip().splitlines()) == 1


# ----------------------------------------------------------------------------- tar shards

def test_captions_of_every_shard_layout():
    from milnce.train.shards import BadRecord, parse_captions

    v2d = {"yt_meta_dict": {"info": None, "subtitles": {"de": [], "en": [
        {"start": "00:00:01.500", "end": "00:00:03.000", "lines": ["cut the", "onions"]},
        {"start": "00:01:00.000", "end": "00:01:02.250", "lines": ["stir"]}]}}}
    assert parse_captions({"json": json.dumps(v2d).encode()}, 5.0) == [(1.5, 3.0, "cut the onions"), (60.0, 62.25, "stir")]
    clipped = {"yt_meta_dict": {"subtitles": [{"start": "00:00:00.000", "end": "00:00:01.000", "lines": ["a"]}]}}
    assert parse_captions({"json": json.dumps(clipped).encode()}, 5.0) == [(0.0, 1.0, "a")]
    simple = [{"start": 2, "end": 4.5, "text": "b"}, {"start": 0, "end": 1, "text": "a"}]
    assert parse_captions({"json": json.dumps(simple).encode()}, 5.0) == [(0.0, 1.0, "a"), (2.0, 4.5, "b")]
    assert parse_captions({"txt": b"whole clip"}, 4.0) == [(0.0, 4.0, "whole clip")]
    with pytest.raises(BadRecord, match="before it starts"):
        parse_captions({"json": json.dumps([{"start": 3, "end": 1, "text": "x"}]).encode()}, 5.0)
    with pytest.raises(BadRecord, match="no captions"):
        parse_captions({"json": b"{}"}, 5.0)


@pytest.fixture(scope="module")
def wds_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wds") / "data"
    assert main(["make-synthetic", str(out), "--num-videos", "6", "--num-val-videos", "2", "--size", "48", "--seed", "1",
                 "--format", "wds", "--videos-per-shard", "2", "--quiet"]) == 0
    return out


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


def test_bad_samples_are_counted_and_the_stop_rule_is_collective(wds_data, tmp_path, capsys):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(wds_data, data)
    shards = sorted((data / "shards").glob("*.tar"))
    _write_bad_shard(shards[1], shards[0])
    truncated = shards[2].read_bytes()
    shards[2].write_bytes(truncated[: len(truncated) // 2])
    cfg = _settings(tmp_path, eval_every=0, save_every=0)
    run = tmp_path / "run"
    assert _train(data, run, cfg, "--steps", "4", "--bad-fraction", "0.9") == 0
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    bad = [r["sample"] for r in recs if r["kind"] == "bad_sample"]
    assert any("novideo" in b and "no video" in b for b in bad), bad
    assert any("backwards" in b and "before it starts" in b for b in bad)
    assert any("garbage" in b for b in bad) and any("truncated" in b for b in bad)
    assert sum(r["bad_samples"] for r in recs if r["kind"] == "train") == len(bad)
    assert "unreadable sample(s) skipped" in capsys.readouterr().err
    assert _train(data, tmp_path / "strict", cfg, "--steps", "4", "--bad-fraction", "0.05", "--bad-window", "2") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("milnce: error: step") and "more than --bad-fraction 0.05" in err[-1]


@pytest.mark.slow
def test_training_on_shards_resumes_exactly(wds_data, tmp_path):
    cfg = _settings(tmp_path, save_every=2, workers=1, eval_every=0)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert _train(wds_data, straight, cfg, "--steps", "4") == 0
    assert _train(wds_data, resumed, cfg, "--steps", "2") == 0
    assert _final(resumed)["data"]["streams"] == {"0": [0, 4]}
    assert _train(wds_data, resumed, cfg, "--steps", "4", "--resume") == 0
    a, b = _final(straight), _final(resumed)
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), k



@pytest.mark.slow
def test_torchrun_on_shards_stops_collectively(wds_data, tmp_path):
    """Two processes on shards, one of them damaged: the stop decision is taken by both ranks
    (counts all-reduced), so neither waits in a collective until a timeout; a tolerant run ends."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(wds_data, data)
    shards = sorted((data / "shards").glob("*.tar"))
    _write_bad_shard(shards[1], shards[0])
    cfg = _settings(tmp_path, eval_every=0, save_every=0, batch_size=4)
    exe = Path(sys.executable).parent / "milnce"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    launcher += ["--no-python", str(exe)] if exe.exists() else ["-m", "milnce.cli"]
    base = [*launcher, "train", "--data", str(data), "--config", str(cfg), "--steps", "3"]
    strict = subprocess.run([*base, "--out", str(tmp_path / "strict"), "--bad-fraction", "0", "--bad-window", "1"],
                            env=_env(), capture_output=True, text=True, timeout=240)
    assert strict.returncode != 0
    assert strict.stderr.count("more than --bad-fraction 0") == 2, strict.stderr[-3000:]  # both ranks decided
    ok = subprocess.run([*base, "--out", str(tmp_path / "ok"), "--bad-fraction", "0.9"],
                        env=_env(), capture_output=True, text=True, timeout=240)
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert json.loads(ok.stdout.strip().splitlines()[-1])["bad_samples"] >= 3


@pytest.mark.slow
def test_micro_batch_resumes_exactly(synth, tmp_path):
    cfg = _settings(tmp_path, batch_size=4, save_every=2)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert _train(synth, straight, cfg, "--steps", "3", "--micro-batch", "2") == 0
    assert _train(synth, resumed, cfg, "--steps", "2", "--micro-batch", "2") == 0
    assert _train(synth, resumed, cfg, "--steps", "3", "--resume") == 0
    a, b = _final(straight), _final(resumed)
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), k


@pytest.mark.slow
def test_micro_batch_under_torchrun_equals_one_process(synth, tmp_path):
    cfg = _settings(tmp_path, **{**EXACT, "batch_size": 8})
    one, two = tmp_path / "one", tmp_path / "two"
    assert _train(synth, one, cfg, "--steps", "2", "--micro-batch", "2") == 0
    exe = Path(sys.executable).parent / "milnce"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    launcher += ["--no-python", str(exe)] if exe.exists() else ["-m", "milnce.cli"]
    res = subprocess.run([*launcher, "train", "--data", str(synth), "--out", str(two), "--config", str(cfg),
                          "--steps", "2", "--micro-batch", "2"], env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    # the same arithmetic but the 4 micro-batch gradients are summed as ((a+b)+c)+d on one process and
    # (a+b)+(c+d) over two: float64 rounding, grown by the second step of a run at lr 1
    _assert_close_state(_final(one), _final(two), rel=1e-8, buffers=False)


@pytest.mark.slow
def test_bench_train_end_to_end():
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_train.py"
    res = subprocess.run([sys.executable, str(script), "--micro-batch", "2", "--batch-size", "2", "--num-frames", "8",
                          "--size", "32", "--steps", "1", "--warmup", "0", "--workers", "0", "--threads", "1"],
                         env=_env(), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert [r["B"] for r in out["memory"]] == [2, 4, 8, 16] and all(r["peak_memory_mib"] > 0 for r in out["memory"])
    assert set(out["data"]) == {"folder", "wds"} and all(0 <= v["data_wait_fraction"] <= 1 for v in out["data"].values())
