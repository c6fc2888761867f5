"""CrossTask zero-shot step localisation (``milnce eval crosstask``): the release readers against
files written in the release's exact format, bad rows, the recall against a hand-computed
example, the protocol end to end with a fake pipeline (scores recomputed independently and
re-decoded from ``scores.npz``), missing / unreadable / too-short videos, and the real pipeline
through the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from milnce.errors import UsageError
from milnce.eval.crosstask import (
    AnnotationIssues,
    ground_truth,
    load_release,
    n_positions,
    position_starts,
    read_annotation,
    read_tasks,
    read_videos,
    step_recall,
)
from milnce.eval.crosstask_run import evaluate_crosstask, format_crosstask, write_crosstask
from milnce.eval.dp import assign_steps
from milnce.eval.protocol import EvalSettings
from tests.eval.test_run import FakeModel, FakeRunner, NoRunner, window_vec
from video_fixtures import make_video

SMALL = EvalSettings(num_windows=1, num_frames=8, fps=10.0, size=32)

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


# ------------------------------------------------------------------------------ readers


def test_readers_release_format(tmp_path):
    rel = write_release(tmp_path, [("16815", "aaa"), ("23521", "bbb")], {"16815_aaa": "1,0.5,2.7\n3,4.0,5.0\n"})
    tasks = read_tasks(rel / "tasks_primary.txt")
    assert list(tasks) == ["16815", "23521"]
    assert tasks["16815"].steps == ("cut tomato", "add salt", "pour water") and tasks["16815"].title == "Jack Up a Car"
    assert tasks["23521"].url.startswith("https://www.wikihow.com/")
    vids = read_videos(rel / "videos_val.csv")
    assert [(v.task_id, v.video_id, v.line) for v in vids] == [("16815", "aaa", 1), ("23521", "bbb", 2),
                                                                ("91537", "relVid", 3)]
    assert vids[0].url == "https://www.youtube.com/watch?v=aaa"
    assert read_annotation(rel / "annotations" / "16815_aaa.csv", 3) == [(1, 0.5, 2.7, 1), (3, 4.0, 5.0, 2)]
    for where in (rel, tmp_path):  # the release folder or the folder it was unzipped into
        r = load_release(where)
        assert [v.video_id for v in r.videos] == ["aaa", "bbb"] and r.other_tasks == 1
    assert [v.video_id for v in load_release(tmp_path, limit=1).videos] == ["aaa"]
    assert [v.video_id for v in load_release(tmp_path, videos_file="videos.csv").videos] == ["aaa", "bbb", "trainVid"]
    # no trailing blank line after the last block, CRLF line ends: still read
    (rel / "tasks_primary.txt").write_bytes((rel / "tasks_primary.txt").read_text().rstrip("\n").replace("\n", "\r\n")
                                            .encode())
    assert read_tasks(rel / "tasks_primary.txt")["23521"].steps == ("open door", "playing guitar")


def test_bad_release_files(tmp_path):
    rel = write_release(tmp_path, [("16815", "aaa")], {})
    f = rel / "tasks_primary.txt"
    good = f.read_text()
    f.write_text(good.replace("\n3\n", "\n4\n"))
    with pytest.raises(UsageError, match=r"tasks_primary.txt, line 5: task 16815 says 4 steps but lists 3"):
        read_tasks(f)
    f.write_text(good.replace("\n3\n", "\nthree\n"))
    with pytest.raises(UsageError, match=r"line 4: the number of steps must be a whole number"):
        read_tasks(f)
    f.write_text(good + "99999\nTruncated\n")
    with pytest.raises(UsageError, match=r"line 13: incomplete task block"):
        read_tasks(f)
    f.write_text(good + good)
    with pytest.raises(UsageError, match="appears twice"):
        read_tasks(f)
    a = rel / "annotations" / "16815_aaa.csv"
    for text, pattern in (("1,0,2\n4,3,5\n", r"16815_aaa.csv, line 2: step 4 does not exist: the task has steps 1..3"),
                          ("0,1,2\n", r"line 1: step 0 does not exist"),
                          ("1,0,2\n\n2,x,5\n", r"line 3: start must be a number"),
                          ("1,0,nan\n", r"line 1: end must be finite"),
                          ("1,0\n", r"line 1: expected step,start,end")):
        a.write_text(text)
        with pytest.raises(UsageError, match=pattern):
            read_annotation(a, 3)
    for bad in ("16815,../../etc/passwd,u\n", "16815,..,u\n", "../x,abc,u\n"):
        (rel / "videos_val.csv").write_text("16815,fine,u\n" + bad)
        with pytest.raises(UsageError, match=r"videos_val.csv, line 2: .* is not a plain name"):
            read_videos(rel / "videos_val.csv")
    (rel / "videos_val.csv").write_text("16815\n")
    with pytest.raises(UsageError, match=r"videos_val.csv, line 1: expected task,video_id,url"):
        read_videos(rel / "videos_val.csv")
    with pytest.raises(FileNotFoundError):
        load_release(tmp_path / "nope")
    with pytest.raises(UsageError, match="not a CrossTask release folder"):
        load_release(rel / "annotations")


# ------------------------------------------------------------------------------ protocol pieces


def test_positions_windows_and_ground_truth_by_hand():
    assert [n_positions(d) for d in (0.0, 0.4, 1.0, 7.0, 7.2, float("nan"))] == [0, 1, 1, 7, 8, 0]
    # 3.2 s windows centred on t + 0.5, kept inside a 7.5 s video
    np.testing.assert_allclose(position_starts(8, 7.5, 3.2), [0, 0, 0.9, 1.9, 2.9, 3.9, 4.3, 4.3])
    np.testing.assert_allclose(position_starts(2, 1.5, 3.2), [0, 0])  # video shorter than a window
    issues = AnnotationIssues()
    rows = [(1, 0.5, 2.2, 1), (2, 4.0, 4.0, 2), (3, 5.5, 9.1, 3), (2, 3.0, 1.0, 4), (1, 7.0, 8.0, 5)]
    y = ground_truth(rows, 3, 7, "t_v.csv", issues)
    # step 1: floor(0.5)=0 .. ceil(2.2)=3 -> positions 0,1,2; step 2: [4, 4) is empty;
    # step 3: 5 .. ceil(9.1)=10 cut at 7 -> 5,6; row 4 start > end skipped; row 5 starts at 7 = T: outside
    assert y[:, 0].tolist() == [1, 1, 1, 0, 0, 0, 0]
    assert y[:, 1].tolist() == [0] * 7
    assert y[:, 2].tolist() == [0, 0, 0, 0, 0, 1, 1]
    assert issues.start_after_end == ["t_v.csv:4"] and issues.past_video_end == ["t_v.csv:5"]
    assert issues.cut_at_video_end == ["t_v.csv:3"]


def test_recall_hand_computed():
    # task A, video 1: steps 1 and 3 annotated (2 distinct), prediction hits step 1 only
    y1 = np.zeros((6, 3), np.uint8)
    y1[0:2, 0] = 1
    y1[4:6, 2] = 1
    # task A, video 2: all three annotated, prediction hits steps 2 and 3
    y2 = np.zeros((5, 3), np.uint8)
    y2[0, 0] = y2[2, 1] = y2[4, 2] = 1
    matched, annotated = step_recall([y1, y2], [np.array([1, 2, 3]), np.array([1, 2, 4])])
    assert (matched, annotated) == (1 + 2, 2 + 3)  # pooled: 3 / 5 = 60 %


# ------------------------------------------------------------------------------ end to end, fake pipeline


def _dataset(tmp_path):
    vids = tmp_path / "videos"
    (vids / "sub").mkdir(parents=True)
    make_video(vids / "aaa.mp4", n=70, rate=10, width=32, height=32)        # 7.0 s -> 7 positions
    make_video(vids / "sub" / "bbb.mkv", n=45, rate=10, width=32, height=32)  # 4.5 s -> 5 positions
    make_video(vids / "ccc.webm", n=12, rate=10, width=32, height=32, codec="libvpx")  # 1.2 s: 2 < 3 steps
    (vids / "ddd.mp4").write_bytes(b"not a video")
    ann = {"16815_aaa": "1,0.2,1.9\n2,2.0,3.5\n3,5.0,6.0\n2,9.0,8.0\n",
           "23521_bbb": "1,0,1\n2,3.5,9.0\n",
           "16815_ccc": "1,0,1\n",
           "16815_ddd": "1,0,1\n",
           "23521_gone": "1,0,1\n"}
    order = [("16815", "aaa"), ("23521", "bbb"), ("16815", "ccc"), ("16815", "ddd"), ("23521", "gone"),
             ("16815", "noann")]
    return vids, write_release(tmp_path, order, ann)


def test_end_to_end_fake_pipeline(tmp_path):
    vids, rel = _dataset(tmp_path)
    model = FakeModel(["cut", "tomato", "add", "salt", "pour", "water", "open", "door", "playing", "guitar"])
    runner = FakeRunner()
    res = evaluate_crosstask(model, vids, rel, settings=SMALL, cache=tmp_path / "c", runner=runner)
    assert sorted(v.video.video_id for v in res.videos) == ["aaa", "bbb"]
    assert list(res.missing) == ["gone"] and list(res.unreadable) == ["ddd"]
    assert "2 position(s)" in res.skipped["ccc"] and "no annotation file" in res.skipped["noann"]
    assert res.issues.start_after_end == ["16815_aaa.csv:4"] and res.issues.cut_at_video_end == ["23521_bbb.csv:2"]
    # one job per video, one window per position, centred on it and kept inside the video
    starts = {Path(j.path).stem: list(j.starts) for j in runner.jobs}
    w = 0.8  # 8 frames at 10 fps
    for stem, dur, t_len in (("aaa", 7.0, 7), ("bbb", 4.5, 5)):
        expect = [min(max(t + 0.5 - w / 2, 0.0), dur - w) for t in range(t_len)]
        np.testing.assert_allclose(starts[stem], sorted(set(np.round(expect, 12))), atol=1e-9)
    # scores recomputed independently: window embedding . step text embedding
    from milnce.eval.run import encode_captions

    out = write_crosstask(res, tmp_path / "out")
    with np.load(out["scores"], allow_pickle=False) as z:
        assert z["video_id"].tolist() == ["aaa", "bbb"] and z["task"].tolist() == ["16815", "23521"]
        stored = {vid: (z[f"scores_{i}"], z[f"starts_{i}"]) for i, vid in enumerate(z["video_id"].tolist())}
    for vid, task, dur, t_len in (("aaa", "16815", 7.0, 7), ("bbb", "23521", 4.5, 5)):
        text = encode_captions(model, TASKS[task][1], 30)[0]
        st = [min(max(t + 0.5 - w / 2, 0.0), dur - w) for t in range(t_len)]
        expect = np.stack([window_vec(vid, s) for s in st]) @ text.T
        np.testing.assert_allclose(stored[vid][0], expect, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(stored[vid][1], st, atol=1e-9)
    # re-decoded from scores.npz: DP on -log_softmax, recall by hand from the annotation files
    per_task = {}
    truth = {"aaa": [(0, 2, 0), (2, 4, 1), (5, 6, 2)], "bbb": [(0, 1, 0), (3, 5, 1)]}
    for vid, task in (("aaa", "16815"), ("bbb", "23521")):
        s = stored[vid][0].astype(np.float64)
        lsm = s - np.log(np.exp(s).sum(axis=1, keepdims=True))
        pos = assign_steps(-lsm).positions
        hits = sum(1 for a, b, k in truth[vid] if a <= pos[k] < b)
        per_task[task] = 100.0 * hits / len(truth[vid])
    assert res.metrics["per_task"]["16815"]["dp_log_softmax"] == pytest.approx(per_task["16815"])
    assert res.metrics["recall"] == pytest.approx(np.mean(list(per_task.values())))
    argmax_hits = {vid: sum(1 for a, b, k in truth[vid] if a <= int(np.argmax(stored[vid][0][:, k])) < b)
                   for vid in truth}
    assert res.metrics["argmax"] == pytest.approx(np.mean([100 * argmax_hits["aaa"] / 3, 100 * argmax_hits["bbb"] / 2]))
    data = json.loads(out["metrics"].read_text())
    assert data["published"] == {"avg": 40.5} and data["counts"]["evaluated"] == 2
    assert data["missing_videos"] == ["gone"] and "ddd" in data["unreadable_videos"]
    assert set(data["skipped_videos"]) == {"ccc", "noann"}
    with np.load(out["embeddings"], allow_pickle=False) as z:
        assert z["mask"].tolist() == [True, True, False, False, False, False]
        assert z["window_embeddings"].shape == (12, 512) and z["text_embeddings"].shape == (5, 512)
    table = format_crosstask(res)
    assert "40.5" in table and "Jack Up a Car" in table and "videos evaluated: 2 of 6" in table
    # a rerun comes from the cache
    again = evaluate_crosstask(model, vids, rel, settings=SMALL, cache=tmp_path / "c", runner=NoRunner())
    assert again.info["cached_videos"] == 2 and again.metrics["recall"] == res.metrics["recall"]


# ------------------------------------------------------------------------------ command line, real pipeline


def test_cli_crosstask_real_pipeline(model, checkpoint, tmp_path, capsys, monkeypatch):
    pytest.importorskip("milnce.extract")
    import milnce.commands.eval_crosstask as cmd
    from milnce.cli import main

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

