"""``milnce.video.ffmpeg_exact``: Frames exactly as the reference pipelines got them from the ``ffmpeg`` command
line."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch

from ffmpeg_reference import HAVE_FFMPEG, WHY_NO_FFMPEG, eval_window, extractor_chunks, extractor_frames
from milnce.video.ffmpeg_exact import ffmpeg_chunks, ffmpeg_frames, ffmpeg_window, fps_ticks, scale_size
from video_fixtures import make_video

pytestmark = pytest.mark.skipif(not HAVE_FFMPEG, reason=WHY_NO_FFMPEG)
TOL = 2  # grey levels

CASES = {
    "landscape-25": dict(n=30, rate=25, width=96, height=64),
    "portrait-30": dict(n=28, rate=30, width=48, height=80),
    "ntsc-29.97": dict(n=40, rate=Fraction(30000, 1001), width=80, height=48),
    "vfr": dict(pts_ms=[0, 40, 100, 110, 300, 500, 520, 900, 1000, 1333], width=64, height=48),
    "odd-size": dict(n=20, rate=25, width=97, height=61, pix_fmt="yuv444p"),
    "shorter-than-a-chunk": dict(n=9, rate=25, width=64, height=48),
    "phone-rotated-90": dict(n=20, rate=25, width=96, height=64, rotation=90),
    "phone-rotated-270": dict(n=16, rate=25, width=96, height=64, rotation=-90),
}


def _close(a: np.ndarray, b: np.ndarray) -> None:
    assert a.shape == b.shape
    assert int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max(initial=0)) <= TOL


@pytest.mark.parametrize("name", list(CASES))
def test_chunks_match_the_feature_extractors_ffmpeg(tmp_path, name):
    p = str(make_video(tmp_path / f"{name}.mp4", marker=True, **CASES[name]))
    for fps in (30, 16):  # videoclip, univl
        ref = extractor_chunks(p, fps)
        got = list(ffmpeg_chunks(p, fps, 224, fps))
        assert len(got) == len(ref), (name, fps)
        for c, r in zip(got, ref):
            _close(c.frames, r)
        assert [c.start for c in got] == [k for k in range(len(got))]
        assert got[-1].real == len(extractor_frames(p, fps)) - fps * (len(got) - 1)


def test_rotated_video_keeps_the_reference_quirk(tmp_path):
    """The reference sizes ``scale`` from the coded size while ffmpeg rotates first: a rotated
    96x64 video (shown 64x96) is squashed to 336x224 (not 224x336) before the crop."""
    assert scale_size(96, 64, 224) == (336, 224)
    p = str(make_video(tmp_path / "r.mp4", n=5, rate=25, width=96, height=64, rotation=90, marker=True))
    rgb = next(iter(ffmpeg_frames(p, 30, 224)))[0]
    _close(rgb, extractor_frames(p, 30)[0])


def test_video_starting_after_its_audio_is_filled_with_its_first_frame(tmp_path):
    """CFR output: the gap between the file start (audio at 0) and the first video frame (0.2 s)
    is filled with copies of the first frame, as ffmpeg's rawvideo output does."""
    p = str(make_video(tmp_path / "late.mp4", pts_ms=[200 + 40 * i for i in range(11)], audio=True))
    ref = extractor_frames(p, 30)
    got = [rgb for rgb, k in ffmpeg_frames(p, 30, 224) for _ in range(k)]
    # the end differs by FFmpeg version (the MP4 demuxer's duration of the last sample), so
    # compare what both versions agree on: the filled start and every frame up to the end
    assert abs(len(got) - len(ref)) <= 3
    for a, b in zip(got, ref):
        _close(a, b)


@pytest.mark.parametrize("start", [0.0, 0.3, 1.3, 2.5])
def test_eval_window_matches_the_reference_loader(tmp_path, start):
    p = str(make_video(tmp_path / "v.mp4", n=50, rate=25, width=96, height=64, marker=True))
    got, n = ffmpeg_window(p, start, 16, 10, 112)
    ref = eval_window(p, start, 16, 10, 112)
    _close(got, ref)
    assert n == int(ref.reshape(16, -1).any(axis=1).sum())


def test_eval_window_cosine_to_the_reference(tmp_path, model):
    """Per-clip embedding cosine >= 0.999 (a few windows; the frames above are the cheap check)."""
    p = str(make_video(tmp_path / "v.mp4", n=40, rate=25, width=96, height=64, marker=True))
    for start in (0.0, 0.7):
        got, _ = ffmpeg_window(p, start, 16, 10, 112)
        ref = eval_window(p, start, 16, 10, 112)
        x = torch.from_numpy(np.stack([got, ref])).permute(0, 4, 1, 2, 3).float().div(255)
        with torch.inference_mode():
            e = model.encode_video(x).float()
        assert float(torch.nn.functional.cosine_similarity(e[0:1], e[1:2])) >= 0.999


def test_fps_ticks_rules():
    f = Fraction

    def flat(items, end):  # type: ignore[no-untyped-def]
        return [p for p, k in fps_ticks(items, f(10), lambda: end) for _ in range(k)]

    # b is held until c's tick, c until the end
    assert flat([(f(0), "a"), (f(1, 10), "b"), (f(4, 10), "c")], f(5, 10)) == ["a", "b", "b", "b", "c"]
    assert flat([(f(2, 10), "a"), (f(3, 10), "b")], f(4, 10)) == ["a", "a", "a", "b"]  # CFR fills ticks 0, 1
    assert flat([(f(0), "a"), (f(1, 10), "b")], None) == ["a"]  # an end without a time: no flush
    assert flat([(f(0), "a"), (f(1, 20), "b"), (f(1, 10), "c")], f(2, 10)) == ["a", "c"]  # b and c share tick 1
