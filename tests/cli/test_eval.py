"""``milnce eval`` end to end (``milnce.commands.eval``): the CLI run through ``main(argv)`` or a subprocess."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from eval_fixtures import FakeRunner, NoRunner, erofs_open, run_train, tiny_config, write_release, yc_csv
from milnce.cli import main
from milnce.eval import EvalSettings
from milnce.eval import run as run_mod
from video_fixtures import make_video

# ------------------------------------------------------------------------------ command line


def test_cli_eval_fake_pipeline(msrvtt, checkpoint, model, tmp_path, monkeypatch, capsys):
    import milnce.commands.eval as eval_cmd

    root, csv = msrvtt
    runner = FakeRunner()
    monkeypatch.setattr(run_mod, "run_jobs", runner)
    w, v = checkpoint
    real = eval_cmd.model_from_args
    # the options name the conftest checkpoint: the session's model (already loaded); anything else loads
    monkeypatch.setattr(eval_cmd, "model_from_args",
                        lambda args: model if (args.weights, args.vocab) == (str(w), str(v)) else real(args))
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
    csv = yc_csv(tmp_path / "yc.csv", [(1, 0, 101, "cut tomato", "v1"), (2, 1, 101, "add salt", "v1"),
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


def _one_error_line(err: str) -> None:
    assert "Traceback" not in err
    lines = [x for x in err.splitlines() if x.startswith("milnce: error:")]
    assert len(lines) == 1, err


# ------------------------------------------------------------------------------ read-only --out (EROFS injected)


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
    erofs_open(monkeypatch, out)
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


# ------------------------------------------------------------------------------ control characters printed escaped


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

# ------------------------------------------------------------------------------ training with evaluation


@pytest.mark.slow
def test_gradient_accumulation_run(synth, tmp_path):
    # (bf16 autocast on the CPU turns temporal-conv weights NaN in the first step here: the run
    # now stops with a TrainingError naming them instead of reporting garbage metrics)
    cfg = tiny_config(tmp_path, batch_size=4, grad_accum=2, workers=1, eval_every=1)
    assert run_train(synth, tmp_path / "run", cfg, "--steps", "1") == 0
    recs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in recs] == ["eval", "train", "eval"]
    assert np.isfinite(recs[1]["loss"]) and recs[2]["n"] == 4 and recs[2]["chance_R@1"] == 25
