"""Windows cover the whole video, always: the default stride is half the window (whatever the
window), a stride longer than the window needs allow_gaps / --allow-gaps, and the windows the
reader produces cover [0, duration) for any fps x frames x stride x duration (issue 24 item 3)."""

from __future__ import annotations

import math
import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from milnce.cli import main
from milnce.errors import UsageError
from milnce.video.decode import ClipReader
from milnce.windows import WindowSettings, default_stride
from video_fixtures import make_video


def _model(num_frames: int, fps: float, size: int = 32) -> SimpleNamespace:
    return SimpleNamespace(info=SimpleNamespace(num_frames=num_frames, fps=fps, size=size))


def test_default_stride_is_half_the_window():
    assert WindowSettings().stride == 16  # the published 32 frames: unchanged
    assert WindowSettings(num_frames=8).stride == 4
    assert WindowSettings(num_frames=1).stride == 1
    assert WindowSettings(num_frames=15).stride == 7
    # a run folder's 8 frames at 4 fps: a 2 s window every 1 s (before: every 16 frames = 4 s, gaps)
    w = WindowSettings.for_model(_model(8, 4.0))
    assert (w.stride, w.duration, w.hop) == (4, 2.0, 1.0)
    assert WindowSettings().with_(num_frames=8).stride == 4  # follows the window
    assert WindowSettings().with_(num_frames=8, stride=8).stride == 8  # given: kept
    assert WindowSettings(num_frames=8, stride=3).with_(num_frames=16).stride == 3  # a chosen stride stays
    assert WindowSettings.from_dict({"fps": 4.0, "num_frames": 8, "size": 32, "stride": 16}).stride == 16  # stored
    with pytest.raises(UsageError, match="stride"):
        WindowSettings().with_(stride=0)


def test_a_stride_longer_than_the_window_needs_allow_gaps():
    with pytest.raises(UsageError, match="--allow-gaps") as exc:
        WindowSettings.for_model(_model(8, 4.0), stride=16)
    assert "2 s after every window" in str(exc.value)
    w = WindowSettings.for_model(_model(8, 4.0), stride=16, allow_gaps=True)
    assert w.stride == 16
    assert WindowSettings.for_model(_model(8, 4.0), stride=8).stride == 8  # touching windows: no gap


def test_cli_refuses_gaps_before_creating_the_index(tmp_path, capsys, wargs):
    video = tmp_path / "v" / "a.mp4"
    video.parent.mkdir()
    make_video(video, n=10)
    rc = main(["index", str(video.parent), "--index", str(tmp_path / "idx"), "--num-frames", "8", "--stride", "16",
               "--quiet", *wargs])
    assert rc == 2
    err = capsys.readouterr().err
    assert "--allow-gaps" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "idx").exists()


class _Video:
    errors, header_duration, last_time, period = 0, None, 0.0, None

    def close(self) -> None:
        pass


class _Sampler:
    """Every requested time decodes to a 1x1 frame (None where the reader does not need it)."""

    def __init__(self, video_end: float) -> None:
        self.video_end = video_end

    def run(self, times, seek=None):  # type: ignore[no-untyped-def]
        for _t, needed in times:
            yield np.zeros((1, 1, 3), np.uint8) if needed else None


def _windows(fps: float, num_frames: int, stride: int, duration: float) -> list[tuple[float, float]]:
    """The (start, end) of each clip ``ClipReader`` yields for a video of ``duration`` seconds
    (its own window arithmetic; the frames are stubbed)."""
    r = ClipReader.__new__(ClipReader)
    r.path, r.fps, r.num_frames, r.stride, r.size = "x.mp4", float(fps), num_frames, stride, 1
    r.t0, r.stop, r.pad, r._start_given, r.crop = 0.0, duration, "repeat", False, "center"
    r.video, r.sampler, r.warn = _Video(), _Sampler(duration), lambda m: None
    r.num_samples = r.num_windows = 0
    return [(c.start, c.end) for c in r]


def _uncovered(spans: list[tuple[float, float]], duration: float) -> float | None:
    """The first time in [0, duration) that no span covers, or None."""
    reach = 0.0
    for a, b in sorted(spans):
        if a > reach + 1e-6:
            return reach
        reach = max(reach, b)
    return None if reach >= duration - 1e-6 else reach


def test_windows_cover_the_whole_video_for_every_setting():
    """Seeded sweep over fps x frames x stride (default, or any up to the window) x duration, plus
    edge cases: shorter than one window, exactly k windows, one sample past, a last partial window."""
    rng = random.Random(24)
    cases = []
    for _ in range(400):
        fps = rng.choice([1.0, 2.5, 4.0, 10.0, 25.0, 29.97, rng.uniform(0.5, 30.0)])
        t = rng.randint(1, 64)
        s = rng.choice([None, rng.randint(1, t), t])
        cases.append((fps, t, s, rng.uniform(0.05, 40.0)))
    for fps, t in ((10.0, 32), (4.0, 8), (1.0, 1), (30.0, 7)):
        for n in (1, t - 1, t, t + 1, 2 * t, 2 * t + 1, 5 * t - 1):  # samples in the video
            if n >= 1:
                cases.append((fps, t, None, n / fps))
                cases.append((fps, t, t, n / fps))
    for fps, t, s, dur in cases:
        w = WindowSettings(fps=fps, num_frames=t, size=32, stride=s or 0)
        assert w.stride <= w.num_frames and (s is not None or w.stride == default_stride(t))
        spans = _windows(w.fps, w.num_frames, w.stride, dur)
        assert spans, (fps, t, s, dur)
        gap = _uncovered(spans, dur)
        assert gap is None, f"fps={fps} frames={t} stride={w.stride} duration={dur}: nothing covers {gap} s"
        # the last partial window rule: at most one window is shorter than num_frames, and it is the last
        short = [i for i, (a, b) in enumerate(spans) if b - a < w.duration - 1e-6]
        assert short in ([], [len(spans) - 1])
        n = math.ceil(dur * fps - 1e-9)
        assert spans[-1][1] >= n / fps - 1e-6


def test_gaps_are_real_when_allowed():
    spans = _windows(4.0, 8, 16, 8.0)  # the 8 s video: starts 0, 4; ends 2, 6
    assert spans == [(0.0, 2.0), (4.0, 6.0)]
    assert _uncovered(spans, 8.0) == 2.0


def test_real_video_default_stride_covers_it(tmp_path: Path):
    from milnce.video.clips import read_clips

    video = make_video(tmp_path / "a.mp4", n=32, rate=4)  # 8 s
    w = WindowSettings.for_model(_model(8, 4.0))
    spans = [(c.start, c.end) for c in read_clips(video, w.fps, w.num_frames, 32, w.stride)]
    assert _uncovered(spans, 8.0) is None
    assert [a for a, _ in spans] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
