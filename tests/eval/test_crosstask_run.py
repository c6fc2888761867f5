"""``milnce.eval.crosstask_run``: ``evaluate_crosstask()``."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from milnce.eval.crosstask_run import evaluate_crosstask, format_crosstask, write_crosstask
from milnce.eval.dp import assign_steps
from milnce.eval.protocol import EvalSettings
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


class FakeModel:
    """Enough of ``MILNCE`` for ``evaluate``: a weights id, a tokenizer and a text tower."""

    def __init__(self, words: list[str], weights_id: str = "fake-1") -> None:
        from milnce.model import TextTower
        from milnce.text import Tokenizer

        torch.manual_seed(0)
        self.tokenizer = Tokenizer(words)
        self.net = type("Net", (), {})()
        self.net.text_module = TextTower(512, len(words) + 1, 300, tokenizer=self.tokenizer).eval()
        self.device = torch.device("cpu")
        self.weights_id = weights_id
