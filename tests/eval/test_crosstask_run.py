"""``milnce.eval.crosstask_run``: ``evaluate_crosstask()``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from eval_fixtures import TASKS, FakeModel, FakeRunner, NoRunner, window_vec, write_release
from milnce.eval.crosstask_run import evaluate_crosstask, format_crosstask, write_crosstask
from milnce.eval.dp import assign_steps
from milnce.eval.protocol import EvalSettings
from video_fixtures import make_video

ONE_WINDOW = EvalSettings(num_windows=1, num_frames=8, fps=10.0, size=32)

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
    res = evaluate_crosstask(model, vids, rel, settings=ONE_WINDOW, cache=tmp_path / "c", runner=runner)
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
    again = evaluate_crosstask(model, vids, rel, settings=ONE_WINDOW, cache=tmp_path / "c", runner=NoRunner())
    assert again.info["cached_videos"] == 2 and again.metrics["recall"] == res.metrics["recall"]

