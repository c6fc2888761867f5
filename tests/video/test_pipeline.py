"""``milnce.video.pipeline``: Decode -> batch -> model."""

from __future__ import annotations

import numpy as np
import pytest

from milnce.extract import (
    VideoJob,
    run_jobs,
)
from milnce.video import VideoWindows
from video_fixtures import SMALL_WINDOWS as S
from video_fixtures import make_video

# ------------------------------------------------------------------------------ pipeline


def test_run_jobs_equals_encode_video_file_workers_0_and_2(model, tree):
    paths = [str(p) for p in sorted((tree / "good").rglob("*.*"))] + [str(tree / "bad" / "text.mp4")]
    jobs = [VideoJob(p, key=i) for i, p in enumerate(paths)]
    runs = {}
    for workers in (0, 2):
        res = list(run_jobs(model, jobs, S, workers=workers, batch_size=3))
        assert sorted(r.key for r in res) == list(range(len(paths)))
        runs[workers] = {r.key: r for r in res}
    for i, p in enumerate(paths):
        a, b = runs[0][i], runs[2][i]
        assert isinstance(a, VideoWindows)
        if "bad" in p:
            assert a.error and b.error and "text.mp4" in a.error and len(a) == 0
            continue
        ref = model.encode_video_file(p, fps=10, num_frames=8, size=32, stride=4, features=True)
        for r in (a, b):
            assert r.error is None
            np.testing.assert_array_equal(r.starts, ref.starts)
            np.testing.assert_array_equal(r.ends, ref.ends)
            # batch composition changes the kernels' rounding: compare relative to the largest value
            np.testing.assert_allclose(r.embeddings, ref.embeddings, rtol=1e-5,
                                       atol=1e-5 * float(np.abs(ref.embeddings).max()))
            np.testing.assert_allclose(r.features, ref.features, rtol=1e-5, atol=1e-5 * float(np.abs(ref.features).max()))
            assert r.duration == pytest.approx(ref.duration)


def test_run_jobs_explicit_starts_zero_padding(model, tree):
    from milnce.video import read_clip

    p = str(tree / "good" / "a.mp4")  # 1.2 s
    for pad in ("zeros", "repeat"):
        clip = read_clip(p, 0.3, 2.0, num_windows=4, fps=10, num_frames=8, size=32, pad=pad)
        starts = np.linspace(0.3, 2.0 - 0.8, 4)
        if pad == "zeros":  # frames past the end are black
            assert int(clip.frames[-1, :, -1].max()) == 0
        ref = model.encode_video(clip.frames, features=True)
        (r,) = run_jobs(model, [VideoJob(p, key="k", starts=starts)], S, pad=pad, workers=0, features=True)
        assert r.key == "k" and r.error is None
        np.testing.assert_array_equal(r.starts, starts)
        np.testing.assert_allclose(r.embeddings, ref[0].numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(r.features, ref[1].numpy(), rtol=1e-5, atol=1e-5)
    (r,) = run_jobs(model, [VideoJob(p, starts=[9.0])], S, workers=0)
    assert r.error and "past the end" in r.error


def test_long_video_split_across_decoders_equals_whole(model, tmp_path):
    """Fewer videos than decoders: a long one is split into parts decoded side by side (seeking
    to keyframes, B-frames in between); windows, times and values equal one whole pass."""
    p = make_video(tmp_path / "long.mp4", n=150, rate=25, width=64, height=48,
                   options={"crf": "0", "preset": "ultrafast", "g": "10", "bf": "2"})
    (whole,) = run_jobs(model, [VideoJob(str(p))], S, workers=0, batch_size=4)
    stats: dict[str, float] = {}
    (split,) = run_jobs(model, [VideoJob(str(p))], S, workers=2, batch_size=4, min_part_s=1.0, stats=stats)
    assert whole.error is None and split.error is None and len(whole) == 14
    np.testing.assert_array_equal(split.starts, whole.starts)
    np.testing.assert_array_equal(split.ends, whole.ends)
    assert split.duration == whole.duration
    top = float(np.abs(whole.embeddings).max())
    np.testing.assert_allclose(split.embeddings, whole.embeddings, rtol=1e-5, atol=1e-5 * top)
    np.testing.assert_allclose(split.features, whole.features, rtol=1e-5, atol=1e-5 * float(np.abs(whole.features).max()))
    assert stats["parts"] == 4


def test_empty_results_take_their_sizes_from_the_model(model, tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"nope" * 100)
    (res,) = run_jobs(model, [str(bad)], S, workers=0, features=True)
    assert res.error and res.embeddings.shape == (0, model.info.embed_dim) and res.features.shape == (0, 1024)
