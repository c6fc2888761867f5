"""Benchmark evaluation (``milnce.eval``, ``milnce eval``): annotation files, video layouts,
the window protocol, tie-exact metrics against a naive implementation, missing and unreadable
videos, the per-video cache, the HMDB-51 probe, reports and the command line.

Most tests inject a fake extraction runner (deterministic window embeddings from the file name
and window start), so they check the plumbing exactly; ``test_real_pipeline_*`` run the real
``milnce.extract`` pipeline with a tiny random model on generated videos.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from milnce.errors import MilnceError, UsageError
from milnce.eval import (
    EvalSettings,
    VideoResolver,
    encode_captions,
    evaluate,
    format_table,
    load_benchmark,
    result_dict,
    retrieval_metrics,
    retrieval_ranks,
    window_starts,
    write_outputs,
)
from milnce.eval import run as run_mod
from milnce.eval.datasets import class_name
from milnce.eval.probe import linear_probe, source_group
from video_fixtures import make_video

SMALL = {"num_frames": 8, "fps": 10.0, "size": 32, "num_windows": 4}


# ------------------------------------------------------------------------------ fakes


@dataclass
class FakeResult:
    key: object
    path: str
    starts: np.ndarray
    ends: np.ndarray
    video_embedding: np.ndarray | None
    mixed_5c: np.ndarray | None
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

    def __call__(self, model, jobs, settings, *, pad, features, batch_size, workers, progress):
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


# ------------------------------------------------------------------------------ miniature datasets


def _yc_csv(path: Path, rows: list[tuple]) -> Path:
    path.write_text("end,start,task,text,video_id\n" + "".join(f"{e},{s},{t},{x},{v}\n" for e, s, t, x, v in rows))
    return path


YC_ROWS = [  # end, start, task, text, video_id
    (4, 0, 226, "cut tomato", "vidA"),
    (9, 5, 226, "add salt", "vidA"),
    (3, 1, 105, "pour water into bowl", "vidB"),
    (2, 2, 105, "open door", "vidB"),        # zero-length clip: all windows start at 2
    (6, 1, 105, "the man is cooking", "vidC"),
    (5, 0, 226, "playing guitar", "vidGone"),  # no such video
]


@pytest.fixture()
def youcook(tmp_path):
    root = tmp_path / "yc"
    (root / "validation" / "226").mkdir(parents=True)
    (root / "validation" / "105").mkdir(parents=True)
    (root / "validation" / "226" / "vidA.mp4").write_bytes(b"x")
    (root / "validation" / "105" / "vidB.webm").write_bytes(b"x")
    (root / "vidC.mkv").write_bytes(b"x")  # flat layout also found
    return root, _yc_csv(tmp_path / "yc.csv", YC_ROWS)


def expected_clip(stem: str, start: float, end: float, s: EvalSettings) -> np.ndarray:
    """Naive protocol: linspace starts by hand, mean of the window embeddings."""
    last = max(start, end - s.num_frames / s.fps - 0.4)
    n = s.num_windows
    starts = [start + (last - start) * k / (n - 1) for k in range(n)] if n > 1 else [start]
    return np.mean([window_vec(stem, t) for t in starts], axis=0)


# ------------------------------------------------------------------------------ annotations


def test_shipped_annotations_load():
    yc, mv, hm = (load_benchmark(n) for n in ("youcook2", "msrvtt", "hmdb51"))
    assert (len(yc.items), len(mv.items), len(hm.items)) == (3350, 1000, 6766)
    assert len({it.video_id for it in yc.items}) == 436
    assert yc.items[0].start == 47 and yc.items[0].end == 60 and yc.items[0].folder == "226"
    assert mv.items[0].video_id == "video9770" and mv.items[0].start is None and mv.items[0].text
    assert hm.items[0].label == "brush_hair" and hm.items[0].folder == "brush_hair_test"
    assert len({it.label for it in hm.items}) == 51
    assert all(it.splits[k] in (0, 1, 2) for it in hm.items for k in range(3))
    small = load_benchmark("hmdb51", limit=102)
    assert len(small.items) == 102 and len({it.label for it in small.items}) == 51 and small.limited
    assert [it.row for it in small.items] == sorted(it.row for it in small.items)


def test_bad_annotations(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_benchmark("msrvtt", tmp_path / "nope.csv")
    (tmp_path / "a.csv").write_text("video_id,caption\nv1,hello\n")
    with pytest.raises(UsageError, match="missing column.*sentence"):
        load_benchmark("msrvtt", tmp_path / "a.csv")
    _yc_csv(tmp_path / "b.csv", [(1, 5, 1, "x", "v")])
    with pytest.raises(UsageError, match="row 2.*before start"):
        load_benchmark("youcook2", tmp_path / "b.csv")
    _yc_csv(tmp_path / "c.csv", [("nan", 0, 1, "x", "v")])
    with pytest.raises(UsageError, match="end must be"):
        load_benchmark("youcook2", tmp_path / "c.csv")
    with pytest.raises(UsageError, match="unknown benchmark"):
        load_benchmark("kinetics")
    with pytest.raises(UsageError, match="limit"):
        load_benchmark("msrvtt", limit=0)


def test_hmdb_label_suffix_and_layouts(tmp_path):
    assert class_name("brush_hair_test") == "brush_hair" and class_name("walk") == "walk"
    assert source_group("April_09_brush_hair_u_nm_np1_ba_goo_2.avi") == "April_09_brush_hair_u_nm_np1_ba_goo"
    rows = "video_id,label,split1,split2,split3\na_0.avi,run_test,1,1,2\nb_0.avi,walk_test,2,1,1\nc_0.avi,sit_test,1,2,1\n"
    (tmp_path / "h.csv").write_text(rows)
    bench = load_benchmark("hmdb51", tmp_path / "h.csv")
    root = tmp_path / "hm"
    for sub, name in (("run", "a_0.avi"), ("walk_test", "b_0.avi"), ("", "c_0.mp4")):
        (root / sub).mkdir(parents=True, exist_ok=True)
        (root / sub / name).write_bytes(b"x")
    paths = VideoResolver(root, "hmdb51").resolve_all(bench.items)
    assert paths[0] == root / "run" / "a_0.avi"            # class folder (label without _test)
    assert paths[1] == root / "walk_test" / "b_0.avi"      # folder named as the csv label
    assert paths[2] == root / "c_0.mp4"                    # flat, re-encoded


def test_youcook_and_msrvtt_layouts(youcook, tmp_path):
    root, csv = youcook
    bench = load_benchmark("youcook2", csv)
    paths = VideoResolver(root, "youcook2").resolve_all(bench.items)
    assert paths[0] == paths[1] == root / "validation" / "226" / "vidA.mp4"
    assert paths[2] == root / "validation" / "105" / "vidB.webm"
    assert paths[4] == root / "vidC.mkv" and paths[5] is None
    deep = tmp_path / "mv" / "some" / "where"
    deep.mkdir(parents=True)
    (deep / "video7.mp4").write_bytes(b"x")
    (tmp_path / "mv" / "video8.mp4").write_bytes(b"x")
    (tmp_path / "m.csv").write_text("key,vid_key,video_id,sentence\nr0,m7,video7,a\nr1,m8,video8,b\nr2,m9,video9,c\n")
    paths = VideoResolver(tmp_path / "mv", "msrvtt").resolve_all(load_benchmark("msrvtt", tmp_path / "m.csv").items)
    assert paths == {0: deep / "video7.mp4", 1: tmp_path / "mv" / "video8.mp4", 2: None}
    with pytest.raises(FileNotFoundError):
        VideoResolver(tmp_path / "nope", "msrvtt")


# ------------------------------------------------------------------------------ protocol


def test_window_starts_formula():
    s = EvalSettings()
    np.testing.assert_allclose(window_starts(47, 60, s), np.linspace(47, 60 - 3.2 - 0.4, 4))
    np.testing.assert_allclose(window_starts(10, 12, s), [10, 10, 10, 10])  # clip shorter than a window
    one = EvalSettings(num_windows=1)
    assert window_starts(3, 30, one).tolist() == [3.0]
    small = EvalSettings(**SMALL)
    np.testing.assert_allclose(window_starts(0, 9, small), np.linspace(0, 9 - 0.8 - 0.4, 4))
    assert EvalSettings.for_benchmark("hmdb51").num_windows == 10
    assert EvalSettings.for_benchmark("msrvtt", num_windows=None, size=112).size == 112
    ws = small.window_settings()
    assert (ws.num_frames, ws.fps, ws.size, ws.crop) == (8, 10.0, 32, "square")
    for bad in ({"num_windows": 0}, {"max_words": 0}, {"size": 0}, {"fps": float("nan")}, {"tail": -1}):
        with pytest.raises(UsageError):
            EvalSettings(**bad)


def test_captions_max_words(model):
    short = ["cut tomato", "the man is cooking"]
    a = encode_captions(model, short, 30)[0]
    b = model.encode_text(short).numpy()
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)  # padding positions do not change the max
    words = "open door cut tomato waterfall playing guitar car drifting a the man woman is cooking pour water into bowl"
    assert len(words.split()) > 16
    long16 = encode_captions(model, [words], 16)[0]
    long30, empty = encode_captions(model, [words, "xyzzy"], 30)
    np.testing.assert_allclose(long16, model.encode_text([words]).numpy(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(long16[0], long30[0]) and empty == 1
    assert model.tokenizer.max_words == 16  # the model's own tokenizer is untouched


# ------------------------------------------------------------------------------ metrics


def naive_ranks(scores: np.ndarray, rule: str) -> list[float]:
    out = []
    for i, row in enumerate(scores):
        better = sum(1 for j, v in enumerate(row) if j != i and v > row[i])
        same = sum(1 for j, v in enumerate(row) if j != i and v == row[i])
        out.append(1 + better + {"pessimistic": same, "optimistic": 0, "average": same / 2}[rule])
    return out


def naive_recall(scores: np.ndarray, k: int, rule: str) -> float:
    hits = 0.0
    for i, row in enumerate(scores):
        better = sum(1 for j, v in enumerate(row) if j != i and v > row[i])
        same = sum(1 for j, v in enumerate(row) if j != i and v == row[i])
        if rule == "average":  # every position among the ties equally likely
            hits += sum(1 for p in range(better + 1, better + same + 2) if p <= k) / (same + 1)
        else:
            hits += (1 + better + (same if rule == "pessimistic" else 0)) <= k
    return 100 * hits / len(scores)


@pytest.mark.parametrize("rule", ["pessimistic", "average", "optimistic"])
def test_metrics_match_naive_with_ties(rule):
    rng = np.random.default_rng(1)
    for n, levels in ((1, 3), (7, 3), (40, 5), (60, 1000)):
        scores = rng.integers(0, levels, size=(n, n)).astype(np.float32)  # many ties
        m = retrieval_metrics(scores, ties=rule)
        ranks = naive_ranks(scores, rule)
        np.testing.assert_allclose(retrieval_ranks(scores, ties=rule), ranks)
        assert m["MedR"] == pytest.approx(float(np.median(ranks)))
        assert m["MeanR"] == pytest.approx(float(np.mean(ranks)))
        for k in (1, 5, 10):
            assert m[f"R@{k}"] == pytest.approx(naive_recall(scores, k, rule))
        assert m["captions"] == n


def test_metrics_without_ties_and_sort_based_reference():
    rng = np.random.default_rng(2)
    scores = rng.standard_normal((50, 50))
    # the usual sort-based computation is right when there are no ties
    order = np.argsort(-scores, axis=1)
    ranks = np.array([1 + int(np.flatnonzero(order[i] == i)[0]) for i in range(50)])
    results = [retrieval_metrics(scores, ties=t) for t in ("pessimistic", "average", "optimistic")]
    assert results[0] == results[1] == results[2]
    assert results[0]["R@1"] == pytest.approx(100 * np.mean(ranks <= 1))
    assert results[0]["R@10"] == pytest.approx(100 * np.mean(ranks <= 10))
    assert results[0]["MedR"] == np.median(ranks) and results[0]["tied"] == 0


def test_all_tied_is_never_a_perfect_score():
    scores = np.zeros((10, 10))
    assert retrieval_metrics(scores)["R@1"] == 0.0 and retrieval_metrics(scores)["MedR"] == 10
    assert retrieval_metrics(scores, ties="average")["R@1"] == pytest.approx(10.0)
    assert retrieval_metrics(scores, ties="optimistic")["R@1"] == 100.0
    with pytest.raises(MilnceError, match="NaN"):
        retrieval_metrics(np.array([[np.nan]]))
    with pytest.raises(UsageError):
        retrieval_metrics(np.zeros((2, 3)))
    targets = np.array([2, 0, 1])
    scores = np.zeros((3, 3))
    scores[np.arange(3), targets] = 1
    assert retrieval_metrics(scores, targets=targets)["R@1"] == 100.0
    assert retrieval_metrics(scores)["R@1"] == 0.0


# ------------------------------------------------------------------------------ evaluate (fake pipeline)


def test_youcook_end_to_end_fake_pipeline(youcook, tmp_path, monkeypatch):
    root, csv = youcook
    s = EvalSettings(**SMALL)
    runner = FakeRunner()
    # crafted text side: caption i embeds exactly as its clip should (computed independently)
    expected = np.stack([expected_clip(v, st, e, s) if v != "vidGone" else np.zeros(512) for e, st, _, _, v in YC_ROWS])
    monkeypatch.setattr(run_mod, "encode_captions", lambda model, texts, mw: (expected[: len(texts)].astype(np.float32), 0))
    res = evaluate(FakeModel(["cut"]), "youcook2", root, annotations=csv, settings=s, cache=tmp_path / "cache",
                   runner=runner)
    # one job per video file, each distinct window start once, settings as the protocol says
    assert sorted(Path(j.path).stem for j in runner.jobs) == ["vidA", "vidB", "vidC"]
    job_b = next(j for j in runner.jobs if Path(j.path).stem == "vidB")
    assert list(job_b.starts) == sorted(set(window_starts(1, 3, s)) | {2.0})
    assert runner.pad == "zeros" and runner.want_features and runner.settings.crop == "square"
    assert res.clips.mask.tolist() == [True] * 5 + [False]
    np.testing.assert_allclose(res.clips.video[:5], expected[:5], rtol=1e-5, atol=1e-5)
    assert res.metrics["R@1"] == 100.0 and res.metrics["captions"] == 5 and res.metrics["MedR"] == 1
    c = res.counts
    assert (c["evaluated"], c["missing"], c["unreadable"], c["videos_missing"]) == (5, 1, 0, 1)
    assert list(res.clips.missing) == ["vidGone"]
    table = format_table(res)
    assert "15.1" in table and "rows evaluated: 5 of 6" in table and "rows present only" in table


def test_unreadable_videos_and_partial_windows(youcook, tmp_path):
    root, csv = youcook
    s = EvalSettings(**SMALL)
    res = evaluate(FakeModel(["cut", "tomato"]), "youcook2", root, annotations=csv, settings=s, cache=False,
                   runner=FakeRunner(fail=("vidB",), drop_last=("vidC",)))
    assert res.clips.mask.tolist() == [True, True, False, False, True, False]
    assert res.clips.unreadable == {"vidB": "cannot decode"}
    c = res.counts
    assert (c["evaluated"], c["missing"], c["unreadable"]) == (3, 1, 2)
    # vidC's last window was not returned: its clip is the mean of the windows that were
    st = window_starts(1, 6, s)
    np.testing.assert_allclose(res.clips.video[4], np.mean([window_vec("vidC", t) for t in st[:-1]], axis=0), rtol=1e-5)
    assert res.metrics["captions"] == 3


def test_cache_reuse_and_invalidation(youcook, tmp_path):
    root, csv = youcook
    s = EvalSettings(**SMALL)
    model = FakeModel(["cut"])
    first = evaluate(model, "youcook2", root, annotations=csv, settings=s, cache=tmp_path / "c", runner=FakeRunner())
    again = evaluate(model, "youcook2", root, annotations=csv, settings=s, cache=tmp_path / "c", runner=NoRunner())
    assert again.info["cached_videos"] == 3 and again.info["windows_embedded"] == 0
    np.testing.assert_array_equal(first.clips.video, again.clips.video)
    np.testing.assert_array_equal(first.clips.mask, again.clips.mask)
    # captions' word count does not touch the video cache; windows, weights and files do
    evaluate(model, "youcook2", root, annotations=csv, settings=EvalSettings(**SMALL, max_words=16),
             cache=tmp_path / "c", runner=NoRunner())
    for changed_settings, changed_model in ((EvalSettings(**{**SMALL, "num_windows": 2}), model),
                                            (s, FakeModel(["cut"], weights_id="fake-2"))):
        r = FakeRunner()
        evaluate(changed_model, "youcook2", root, annotations=csv, settings=changed_settings, cache=tmp_path / "c",
                 runner=r)
        assert len(r.jobs) == 3
    (root / "vidC.mkv").write_bytes(b"changed!")
    r = FakeRunner()
    evaluate(model, "youcook2", root, annotations=csv, settings=s, cache=tmp_path / "c", runner=r)
    assert [Path(j.path).stem for j in r.jobs] == ["vidC"]
    # a damaged entry is recomputed, not trusted
    for f in (tmp_path / "c").rglob("*.npz"):
        f.write_bytes(b"garbage")
    r = FakeRunner()
    evaluate(model, "youcook2", root, annotations=csv, settings=s, cache=tmp_path / "c", runner=r)
    assert len(r.jobs) == 3


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


def test_msrvtt_whole_videos_fake_pipeline(msrvtt, tmp_path):
    root, csv = msrvtt
    s = EvalSettings(**SMALL)
    runner = FakeRunner()
    res = evaluate(FakeModel(["man", "water", "red"]), "msrvtt", root, annotations=csv, settings=s,
                   cache=tmp_path / "c", runner=runner)
    assert res.clips.mask.tolist() == [True, True, True, False, False]
    assert list(res.clips.missing) == ["video5"] and "video4" in res.clips.unreadable
    from milnce.video import probe_video
    for j in runner.jobs:  # whole video: [0, duration]
        dur = probe_video(j.path)["duration"]
        np.testing.assert_allclose(j.starts, np.unique(window_starts(0.0, dur, s)))
    assert res.metrics["captions"] == 3 and res.empty_captions == 2
    out = write_outputs(res, tmp_path / "out")
    data = json.loads(out["metrics"].read_text())
    assert data["counts"]["evaluated"] == 3 and data["counts"]["missing"] == 1 and data["counts"]["unreadable"] == 1
    assert data["published"]["R@1"] == 9.9 and data["weights_id"] == "fake-1"
    assert data["settings"]["num_frames"] == 8 and data["settings"]["max_words"] == 30
    assert data["missing_videos"] == ["video5"] and "video4" in data["unreadable_videos"]
    assert "3 of 5 rows" in data["note"]
    with np.load(out["embeddings"], allow_pickle=False) as z:
        assert z["mask"].tolist() == [True, True, True, False, False]
        assert z["text_embeddings"].shape == (5, 512) and z["clip_embeddings"].shape == (5, 512)
        assert z["video_id"].tolist() == [f"video{i}" for i in range(1, 6)]
        np.testing.assert_array_equal(z["clip_embeddings"], res.clips.video)
    assert "9.9" in out["table"].read_text()


def test_hmdb_probe_separable_features():
    rng = np.random.default_rng(0)
    classes = [f"c{k}" for k in range(5)]
    centers = rng.standard_normal((5, 64)) * 3
    labels = [classes[i % 5] for i in range(300)]
    x = np.stack([centers[i % 5] + rng.standard_normal(64) for i in range(300)])
    splits = np.stack([rng.choice([1, 1, 2, 0], size=300) for _ in range(3)], axis=1)
    groups = [f"g{i // 3}" for i in range(300)]
    res = linear_probe(x, labels, splits, groups=groups, cs=(1e-3, 1e-1, 10.0))
    assert set(res.top1) == {"split1", "split2", "split3"} and res.mean > 95
    assert all(c in (1e-3, 1e-1, 10.0) for c in res.chosen_c.values())
    assert all(len(v) == 3 for v in res.validation.values())
    # random labels: chance level, not a leak from validation into test
    shuffled = list(np.random.default_rng(1).permutation(labels))
    assert linear_probe(x, shuffled, splits, groups=groups, cs=(1e-2, 1.0)).mean < 50
    with pytest.raises(MilnceError, match="no test"):
        linear_probe(x, labels, np.ones((300, 1)))


def test_hmdb_end_to_end_fake_pipeline(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "hmdb"
    lines = ["video_id,label,split1,split2,split3"]
    feats = {}
    for _c, cls in enumerate(("run", "walk", "sit")):
        (root / cls).mkdir(parents=True)
        center = rng.standard_normal(1024) * 2
        for g in range(8):
            for k in range(2):
                vid = f"{cls}_person{g}_{k}.avi"
                make_video(root / cls / vid, n=8, rate=10, width=32, height=32, codec="mpeg4") \
                    if (g, k) == (0, 0) else shutil.copy(root / cls / f"{cls}_person0_0.avi", root / cls / vid)
                feats[Path(vid).stem] = (center + rng.standard_normal(1024)).astype(np.float32)
                flag = "2" if g >= 6 else "1"
                lines.append(f"{vid},{cls}_test,{flag},{flag},{flag}")
    lines.append("gone_person0_0.avi,run_test,1,1,1")
    (tmp_path / "h.csv").write_text("\n".join(lines) + "\n")
    runner = FakeRunner(features=feats)
    res = evaluate(FakeModel(["run"]), "hmdb51", root, annotations=tmp_path / "h.csv",
                   settings=EvalSettings(**{**SMALL, "num_windows": 3}), cache=False, runner=runner, cs=(0.01, 1.0))
    assert res.counts["evaluated"] == 48 and res.counts["missing"] == 1
    assert res.metrics["mean"] == 100.0 and set(res.metrics) >= {"split1", "split2", "split3", "probe"}
    assert res.metrics["probe"]["counts"]["split1"]["test"] == 12
    assert all(len(j.starts) in (1, 3) for j in runner.jobs)
    d = result_dict(res)
    assert d["published"] == {"min": 53.1, "max": 54.8} and d["ties"] is None
    assert "53.1-54.8" in format_table(res)
    with np.load(write_outputs(res, tmp_path / "o")["embeddings"], allow_pickle=False) as z:
        assert z["features"].shape == (49, 1024) and z["label"][0] == "run" and z["splits"].shape == (49, 3)


# ------------------------------------------------------------------------------ command line


def test_cli_eval_fake_pipeline(msrvtt, checkpoint, tmp_path, monkeypatch, capsys):
    from milnce.cli import main

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
    from milnce.cli import main

    assert main(["eval", "msrvtt", "--videos", str(tmp_path / "nope"), "--no-download"]) == 2
    assert "video folder not found" in capsys.readouterr().err
    assert main(["eval", "msrvtt", "--videos", str(tmp_path), "--num-windows", "0", "--no-download"]) == 2
    assert "num_windows" in capsys.readouterr().err
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    assert main(["eval", "youcook2", "--videos", str(tmp_path), "--annotations", str(tmp_path / "bad.csv"),
                 "--no-download"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing column" in err


# ------------------------------------------------------------------------------ real pipeline


def test_real_pipeline_msrvtt(msrvtt, model, tmp_path):
    pytest.importorskip("milnce.extract")
    root, csv = msrvtt
    s = EvalSettings(**SMALL)
    res = evaluate(model, "msrvtt", root, annotations=csv, settings=s, cache=tmp_path / "c", workers=1, batch_size=4)
    assert res.clips.mask.tolist() == [True, True, True, False, False]
    assert np.isfinite(res.clips.video[:3]).all() and np.abs(res.clips.video[:3]).sum() > 0
    assert res.metrics["captions"] == 3
    # the clip embedding is the mean of the model's window embeddings at the protocol's starts
    from milnce.extract import VideoJob, run_jobs
    from milnce.video import probe_video

    p = root / "video1.mp4"
    starts = window_starts(0.0, probe_video(p)["duration"], s)
    (r,) = list(run_jobs(model, [VideoJob(str(p), key=0, starts=list(starts))], s.window_settings(), pad="zeros"))
    np.testing.assert_allclose(res.clips.video[0], r.video_embedding.mean(axis=0), rtol=1e-4, atol=1e-5)
    again = evaluate(model, "msrvtt", root, annotations=csv, settings=s, cache=tmp_path / "c", runner=NoRunner())
    np.testing.assert_array_equal(again.clips.video, res.clips.video)


def test_real_pipeline_cli_youcook(model, checkpoint, tmp_path, capsys):
    pytest.importorskip("milnce.extract")
    from milnce.cli import main

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
