"""``milnce.windows``: Window settings."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

import milnce
from milnce.errors import UsageError
from milnce.recipes import get_recipe
from milnce.windows import WindowSettings
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


def _uncovered(spans: list[tuple[float, float]], duration: float) -> float | None:
    """The first time in [0, duration) that no span covers, or None."""
    reach = 0.0
    for a, b in sorted(spans):
        if a > reach + 1e-6:
            return reach
        reach = max(reach, b)
    return None if reach >= duration - 1e-6 else reach


def test_real_video_default_stride_covers_it(tmp_path: Path):
    from milnce.video.clips import read_clips

    video = make_video(tmp_path / "a.mp4", n=32, rate=4)  # 8 s
    w = WindowSettings.for_model(_model(8, 4.0))
    spans = [(c.start, c.end) for c in read_clips(video, w.fps, w.num_frames, 32, w.stride)]
    assert _uncovered(spans, 8.0) is None
    assert [a for a, _ in spans] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]


def test_window_settings_validate():
    w = milnce.WindowSettings()
    assert (w.fps, w.num_frames, w.size, w.stride) == (10.0, 32, 224, 16)
    assert milnce.WindowSettings.for_model(None) == w  # the registry and the defaults agree
    for bad in ({"fps": float("inf")}, {"fps": float("nan")}, {"size": 100000}, {"crop": "x"}):
        with pytest.raises(UsageError):
            w.with_(**bad)


def test_window_settings_decoder_field():

    assert "decoder" not in WindowSettings().to_dict()  # settings stored before the field stay equal
    s = get_recipe("videoclip").window
    assert WindowSettings.from_dict(s.to_dict()) == s and s.to_dict()["decoder"] == "ffmpeg"
    with pytest.raises(UsageError, match="resize"):
        WindowSettings(crop="resize", decoder="ffmpeg")
    with pytest.raises(UsageError, match="decoder"):
        WindowSettings(decoder="opencv")
