"""``milnce eval`` end to end (``milnce.commands.eval``): the CLI run through ``main(argv)`` or a subprocess."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

import milnce.atomic
from milnce.cli import main
from milnce.eval import EvalSettings
from milnce.eval import run as run_mod
from video_fixtures import make_video

# ------------------------------------------------------------------------------ fakes


@dataclass
class FakeResult:
    key: object
    path: str
    starts: np.ndarray
    ends: np.ndarray
    embeddings: np.ndarray | None
    features: np.ndarray | None
    duration: float
    error: str | None = None


def window_vec(stem: str, start: float, dim: int = 512) -> np.ndarray:
    """The fake pipeline's embedding of the window of video ``stem`` starting at ``start``."""
    seed = int(hashlib.sha256(f"{stem}@{round(start * 1000)}".encode()).hexdigest()[:8], 16)
    return np.random.default_rng(seed).standard_normal(dim).astype(np.float32)


class FakeRunner:
    """Stands in for ``milnce.extract.run_jobs``; records the jobs, yields in reverse order."""

    def __init__(self, fail: tuple[str, ...] = (), features=None, drop_last: tuple[str, ...] = ()) -> None:
        self.jobs: list = []
        self.calls = 0
        self.fail = fail
        self.features = features  # stem -> 1024 vector (HMDB)
        self.drop_last = drop_last

    def __call__(self, model, jobs, settings, *, pad, features, progress, batch_size=None, workers=None, options=None):
        self.calls += 1
        self.settings, self.pad, self.want_features = settings, pad, features
        jobs = list(jobs)
        self.jobs += jobs
        for job in reversed(jobs):
            stem = Path(job.path).stem
            starts = np.asarray(job.starts, np.float64)
            if stem in self.fail:
                yield FakeResult(job.key, job.path, np.zeros(0), np.zeros(0), None, None, float("nan"), "cannot decode")
                continue
            if stem in self.drop_last:
                starts = starts[:-1]
            emb = np.stack([window_vec(stem, s) for s in starts]) if len(starts) else np.zeros((0, 512), np.float32)
            feat = (np.tile(self.features[stem], (len(starts), 1)) if self.features
                    else np.stack([window_vec(stem + "/f", s, 1024) for s in starts]))
            yield FakeResult(job.key, job.path, starts[::-1].copy(), starts[::-1] + settings.duration,
                             emb[::-1].copy(), feat[::-1].copy(), 9.0)


class NoRunner:
    def __call__(self, *a, **k):
        raise AssertionError("the pipeline must not run: everything should come from the cache")


# ------------------------------------------------------------------------------ miniature datasets


def _yc_csv(path: Path, rows: list[tuple]) -> Path:
    path.write_text("end,start,task,text,video_id\n" + "".join(f"{e},{s},{t},{x},{v}\n" for e, s, t, x, v in rows))
    return path


@pytest.fixture(scope="module")
def msrvtt(tmp_path_factory):
    d = tmp_path_factory.mktemp("msrvtt")
    root = d / "videos"
    root.mkdir()
    make_video(root / "video1.mp4", n=30, rate=10, width=32, height=32)   # 3.0 s
    make_video(root / "video2.mp4", n=12, rate=10, width=32, height=32)   # 1.2 s
    make_video(root / "video3.mp4", n=8, rate=10, width=32, height=32)    # 0.8 s
    (root / "video4.mp4").write_bytes(b"not a video at all")
    csv = d / "m.csv"
    csv.write_text("key,vid_key,video_id,sentence\n" + "".join(
        f"ret{i},msr{i},video{i},{t}\n" for i, t in enumerate(
            ["a man is cooking", "the woman pours water", "a red square", "open the door", "a car drifting"], 1)))
    return root, csv


# ------------------------------------------------------------------------------ command line


def test_cli_eval_fake_pipeline(msrvtt, checkpoint, tmp_path, monkeypatch, capsys):

    root, csv = msrvtt
    runner = FakeRunner()
    monkeypatch.setattr(run_mod, "run_jobs", runner)
    w, v = checkpoint
    args = ["eval", "msrvtt", "--videos", str(root), "--annotations", str(csv), "--weights", str(w), "--vocab", str(v),
            "--no-download", "--num-frames", "8", "--size", "32", "--quiet", "--cache", str(tmp_path / "c")]
    rc = main(args + ["--out", str(tmp_path / "out")])
    cap = capsys.readouterr()
    assert rc == 1  # finished, but some videos were missing or unreadable
    assert "R@1" in cap.out and "9.9" in cap.out and "rows evaluated: 3 of 5" in cap.out
    assert "video5" in cap.err and "video4" in cap.err
    assert (tmp_path / "out" / "metrics.json").is_file() and (tmp_path / "out" / "embeddings.npz").is_file()
    monkeypatch.setattr(run_mod, "run_jobs", NoRunner())
    assert main(args + ["--json", "--limit", "3"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["counts"]["rows_selected"] == 3 and data["run"]["cached_videos"] == 3
    assert data["weights_id"] and data["settings"]["size"] == 32


def test_cli_eval_errors(tmp_path, capsys):

    assert main(["eval", "msrvtt", "--videos", str(tmp_path / "nope"), "--no-download"]) == 2
    assert "video folder not found" in capsys.readouterr().err
    assert main(["eval", "msrvtt", "--videos", str(tmp_path), "--num-windows", "0", "--no-download"]) == 2
    assert "num_windows" in capsys.readouterr().err
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    assert main(["eval", "youcook2", "--videos", str(tmp_path), "--annotations", str(tmp_path / "bad.csv"),
                 "--no-download"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing column" in err


def test_real_pipeline_cli_youcook(model, checkpoint, tmp_path, capsys):
    pytest.importorskip("milnce.extract")

    root = tmp_path / "yc" / "validation" / "101"
    root.mkdir(parents=True)
    make_video(root / "v1.mp4", n=20, rate=10, width=48, height=32)  # 2 s
    csv = _yc_csv(tmp_path / "yc.csv", [(1, 0, 101, "cut tomato", "v1"), (2, 1, 101, "add salt", "v1"),
                                         (9, 5, 101, "past the end: zero frames", "v1")])
    w, v = checkpoint
    rc = main(["eval", "youcook2", "--videos", str(tmp_path / "yc"), "--annotations", str(csv), "--weights", str(w),
               "--vocab", str(v), "--no-download", "--num-frames", "8", "--size", "32", "--workers", "0",
               "--quiet", "--cache", str(tmp_path / "c"), "--out", str(tmp_path / "out"), "--json"])
    data = json.loads(capsys.readouterr().out)
    assert rc == 0 and data["counts"]["evaluated"] == 3 and data["metrics"]["captions"] == 3
    assert data["weights_id"] == model.weights_id
    with np.load(tmp_path / "out" / "embeddings.npz", allow_pickle=False) as z:
        assert z["mask"].all() and np.isfinite(z["clip_embeddings"]).all()
        np.testing.assert_allclose(z["text_embeddings"][:2], model.encode_text(["cut tomato", "add salt"]).numpy(),
                                   rtol=1e-5, atol=1e-6)

TASKS = {  # task id -> (title, steps)
    "16815": ("Jack Up a Car", ["cut tomato", "add salt", "pour water"]),
    "23521": ("Make Jello Shots", ["open door", "playing guitar"]),
}


def write_release(root: Path, videos_val: list[tuple[str, str]], annotations: dict[str, str],
                  related: bool = True) -> Path:
    """A CrossTask release folder in the distributed format (no header rows, blank-line blocks)."""
    rel = root / "crosstask_release"
    (rel / "annotations").mkdir(parents=True)
    blocks = "".join(f"{tid}\n{title}\nhttps://www.wikihow.com/{title.replace(' ', '-')}\n{len(steps)}\n"
                     f"{','.join(steps)}\n\n" for tid, (title, steps) in TASKS.items())
    (rel / "tasks_primary.txt").write_text(blocks)
    rows = "".join(f"{t},{v},https://www.youtube.com/watch?v={v}\n" for t, v in videos_val)
    if related:
        rows += "91537,relVid,https://www.youtube.com/watch?v=relVid\n"  # a related task: not evaluated
    (rel / "videos_val.csv").write_text(rows)
    (rel / "videos.csv").write_text(rows + "16815,trainVid,https://www.youtube.com/watch?v=trainVid\n")
    for name, text in annotations.items():
        (rel / "annotations" / f"{name}.csv").write_text(text)
    return rel


# ------------------------------------------------------------------------------ command line, real pipeline


def test_cli_crosstask_real_pipeline(model, checkpoint, tmp_path, capsys, monkeypatch):
    pytest.importorskip("milnce.extract")
    import milnce.commands.eval_crosstask as cmd

    vids = tmp_path / "videos"
    vids.mkdir()
    make_video(vids / "aaa.mp4", n=40, rate=10, width=32, height=32)  # 4 s
    rel = write_release(tmp_path, [("16815", "aaa"), ("23521", "gone")], {"16815_aaa": "1,0,1\n2,1,2\n3,3,4\n",
                                                                         "23521_gone": "1,0,1\n"})
    monkeypatch.setattr(cmd, "model_from_args", lambda args: model)
    w, v = checkpoint
    base = ["eval", "crosstask", "--videos", str(vids), "--annotations", str(rel), "--weights", str(w), "--vocab",
            str(v), "--no-download", "--num-frames", "8", "--size", "32", "--workers", "0", "--quiet",
            "--cache", str(tmp_path / "c")]
    rc = main(base + ["--out", str(tmp_path / "out"), "--json"])
    cap = capsys.readouterr()
    data = json.loads(cap.out)
    assert rc == 1 and data["counts"]["evaluated"] == 1 and data["missing_videos"] == ["gone"]
    assert "gone" in cap.err and 0 <= data["metrics"]["recall"] <= 100
    with np.load(tmp_path / "out" / "scores.npz", allow_pickle=False) as z:
        assert z["scores_0"].shape == (4, 3) and np.isfinite(z["scores_0"]).all()
    # no ffmpeg reference loader exists for CrossTask: the model's usual sampler, the others ffmpeg-exact
    with open(tmp_path / "out" / "metrics.json", encoding="utf-8") as f:
        assert json.load(f)["settings"]["decoder"] == "pyav"
    assert EvalSettings.for_benchmark("crosstask").decoder == "pyav"
    assert {EvalSettings.for_benchmark(b).decoder for b in ("youcook2", "msrvtt", "hmdb51", "ucf101")} == {"ffmpeg"}
    assert main(base[:6] + ["--no-download", "--num-windows", "4"]) == 2
    assert "--num-windows does not apply" in capsys.readouterr().err
    assert main(["eval", "crosstask", "--videos", str(vids), "--no-download"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs --annotations" in err
    (rel / "annotations" / "16815_aaa.csv").write_text("1,0,1\n7,1,2\n")
    assert main(base) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "16815_aaa.csv, line 2: step 7 does not exist" in err


def test_cli_ucf101_needs_the_split_folder(tmp_path, capsys):

    assert main(["eval", "ucf101", "--videos", str(tmp_path), "--no-download"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ucfTrainTestlist" in err


def _erofs_open(monkeypatch: pytest.MonkeyPatch, under: Path) -> None:
    """Every atomic write below ``under`` fails as on a read-only file system."""
    real = open

    def fake_open(file, *args, **kwargs):  # type: ignore[no-untyped-def]
        if str(file).startswith(str(under)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(file))
        return real(file, *args, **kwargs)

    monkeypatch.setattr(milnce.atomic, "open", fake_open, raising=False)


def _one_error_line(err: str) -> None:
    assert "Traceback" not in err
    lines = [x for x in err.splitlines() if x.startswith("milnce: error:")]
    assert len(lines) == 1, err


# ----- gap 4: read-only --out (EROFS injected) --------------------------------------------------


@pytest.fixture()
def msrvtt_tiny(tmp_path, monkeypatch, model):
    """An MSR-VTT miniature with the fake pipeline and the session model (nothing decoded)."""
    import milnce.commands.eval as eval_cmd

    root = tmp_path / "videos"
    root.mkdir()
    for i in (1, 2):
        make_video(root / f"video{i}.mp4", n=8, rate=10, width=32, height=32)
    csv = tmp_path / "m.csv"
    csv.write_text("key,vid_key,video_id,sentence\nret1,msr1,video1,a man\nret2,msr2,video2,the woman\n")
    runner = FakeRunner()
    monkeypatch.setattr(run_mod, "run_jobs", runner)
    monkeypatch.setattr(eval_cmd, "model_from_args", lambda args: model)
    runner.args = ["eval", "msrvtt", "--videos", str(root), "--annotations", str(csv), "--num-frames", "8",
                   "--size", "32", "--quiet", "--no-cache"]
    return runner


def test_read_only_eval_out_is_one_line(tmp_path, msrvtt_tiny, monkeypatch, capsys):
    out = tmp_path / "out"
    out.mkdir()
    _erofs_open(monkeypatch, out)
    assert main([*msrvtt_tiny.args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    _one_error_line(err)
    assert "cannot write" in err and "Read-only file system" in err
    assert not list(out.iterdir())  # no temporary file left
    # a folder that cannot even be created
    real_mkdir = Path.mkdir

    def mkdir(self, *a, **k):  # type: ignore[no-untyped-def]
        if str(self).startswith(str(tmp_path / "new")):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return real_mkdir(self, *a, **k)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    assert main([*msrvtt_tiny.args, "--out", str(tmp_path / "new" / "out")]) == 2
    err = capsys.readouterr().err
    _one_error_line(err)
    assert "Read-only file system" in err


# ----- gap 5: ESC sequences and newlines in names are printed escaped ---------------------------


def _assert_escaped(text: str) -> None:
    assert "\x1b" not in text and "\r" not in text
    assert not any(line.lstrip().startswith("failed: forged") for line in text.splitlines())
    assert "\\x1b[2J" in text and "\\x0afailed: forged" in text


def test_eval_listings_and_error_lines_escape_control_characters(tmp_path, msrvtt_tiny, capsys):
    vid = "vid\x1b[2J\x1b[31m\nfailed: forged"
    root = Path(msrvtt_tiny.args[msrvtt_tiny.args.index("--videos") + 1])
    csv = Path(msrvtt_tiny.args[msrvtt_tiny.args.index("--annotations") + 1])
    shutil.copy(root / "video1.mp4", root / f"{vid}.mp4")
    csv.write_text(csv.read_text() + f"ret3,msr3,\"{vid}\",a car\nret4,msr4,\"gone{vid}\",a dog\n")
    msrvtt_tiny.fail = (vid,)
    assert main(msrvtt_tiny.args) == 1
    cap = capsys.readouterr()
    _assert_escaped(cap.err)
    assert "\x1b" not in cap.out
    # an error line naming a path with control characters
    assert main(["eval", "msrvtt", "--videos", str(tmp_path / "no\x1b[2Jsuch"), "--no-download"]) == 2
    err = capsys.readouterr().err
    assert "\x1b" not in err and "no\\x1b[2Jsuch" in err

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


def test_gradient_accumulation_run(synth, tmp_path):
    # (bf16 autocast on the CPU turns temporal-conv weights NaN in the first step here: the run
    # now stops with a TrainingError naming them instead of reporting garbage metrics)
    cfg = _settings(tmp_path, batch_size=4, grad_accum=2, workers=1, eval_every=1)
    assert _train(synth, tmp_path / "run", cfg, "--steps", "1") == 0
    recs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in recs] == ["eval", "train", "eval"]
    assert np.isfinite(recs[1]["loss"]) and recs[2]["n"] == 4 and recs[2]["chance_R@1"] == 25
