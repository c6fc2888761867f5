"""``milnce.eval.run``: ``evaluate()``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from eval_fixtures import (
    SMALL,
    YC_ROWS,
    FakeModel,
    FakeRunner,
    NoRunner,
    damage,
    window_vec,
    youcook_folder,
)
from ffmpeg_reference import HAVE_FFMPEG, WHY_NO_FFMPEG, eval_window
from milnce.eval import (
    EvalSettings,
    encode_captions,
    evaluate,
    format_table,
    result_dict,
    window_starts,
    write_outputs,
)
from milnce.eval import run as run_mod
from video_fixtures import make_video


def expected_clip(stem: str, start: float, end: float, s: EvalSettings) -> np.ndarray:
    """Naive protocol: linspace starts by hand, mean of the window embeddings."""
    last = max(start, end - s.num_frames / s.fps - 0.4)
    n = s.num_windows
    starts = [start + (last - start) * k / (n - 1) for k in range(n)] if n > 1 else [start]
    return np.mean([window_vec(stem, t) for t in starts], axis=0)


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
    (r,) = list(run_jobs(model, [VideoJob(str(p), key=0, starts=list(starts))], s.window, pad="zeros"))
    np.testing.assert_allclose(res.clips.video[0], r.embeddings.mean(axis=0), rtol=1e-4, atol=1e-5)
    again = evaluate(model, "msrvtt", root, annotations=csv, settings=s, cache=tmp_path / "c", runner=NoRunner())
    np.testing.assert_array_equal(again.clips.video, res.clips.video)


@pytest.mark.skipif(not HAVE_FFMPEG, reason=WHY_NO_FFMPEG)
def test_eval_clip_embeddings_match_the_reference_loader(tmp_path, model):
    """``embed_clips`` (the pipeline, ffmpeg-exact path) vs the reference loader's clips through
    the same weights: per-clip cosine >= 0.999 (the issue's target)."""
    from milnce.eval.datasets import EvalItem
    from milnce.eval.protocol import EvalSettings, window_starts
    from milnce.eval.run import embed_clips

    v = make_video(tmp_path / "yc.mp4", n=60, rate=25, width=96, height=64, marker=True)  # 2.4 s
    s = EvalSettings(num_windows=2, num_frames=8, fps=10.0, size=64)
    items = [EvalItem(0, "yc", 0.0, 1.5, "a"), EvalItem(1, "yc", 0.9, 2.4, "b")]
    got = embed_clips(model, items, {0: v, 1: v}, s, workers=0)
    assert got.mask.all()
    for i, it in enumerate(items):
        wins = [eval_window(str(v), float(st), 8, 10, 64) for st in window_starts(it.start, it.end, s)]
        x = torch.from_numpy(np.stack(wins)).permute(0, 4, 1, 2, 3).float().div(255)
        with torch.inference_mode():
            ref = model.encode_video(x).float().mean(0, keepdim=True)
        cos = torch.nn.functional.cosine_similarity(ref, torch.from_numpy(got.video[i : i + 1]))
        assert float(cos) >= 0.999


# ------------------------------------------------------------------------------ damaged cache entries


def test_damaged_eval_cache_is_recomputed_by_evaluate(tmp_path):
    root, csv = youcook_folder(tmp_path)
    s = EvalSettings(num_frames=8, fps=10.0, size=32, num_windows=4)
    model = FakeModel(["cut"])
    first = evaluate(model, "youcook2", root, annotations=csv, settings=s, cache=tmp_path / "c", runner=FakeRunner())
    entries = sorted((tmp_path / "c").rglob("*.npz"))
    assert len(entries) == 3
    damage("truncated", entries[0])
    with np.load(entries[1]) as z:  # a NaN in a cached embedding, the file otherwise whole
        e = {k: z[k] for k in z.files}
    e["video_embedding"][0, 0] = np.nan
    with open(entries[1], "wb") as fh:
        np.savez(fh, **e)
    damage("object arrays", entries[2])
    r = FakeRunner()
    again = evaluate(model, "youcook2", root, annotations=csv, settings=s, cache=tmp_path / "c", runner=r)
    assert len(r.jobs) == 3 and not again.clips.unreadable
    np.testing.assert_array_equal(first.clips.mask, again.clips.mask)
    np.testing.assert_allclose(first.clips.video[first.clips.mask], again.clips.video[again.clips.mask])
