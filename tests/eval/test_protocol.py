"""``milnce.eval.protocol``: The public evaluation protocol."""

from __future__ import annotations

import numpy as np
import pytest

from ffmpeg_reference import HAVE_FFMPEG, WHY_NO_FFMPEG
from milnce.errors import UsageError
from milnce.eval import (
    EvalSettings,
    window_starts,
)
from video_fixtures import make_video

SMALL = {"num_frames": 8, "fps": 10.0, "size": 32, "num_windows": 4}


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
    ws = small.window
    assert (ws.num_frames, ws.fps, ws.size, ws.crop) == (8, 10.0, 32, "square")
    for bad in ({"num_windows": 0}, {"max_words": 0}, {"size": 0}, {"fps": float("nan")}, {"tail": -1}):
        with pytest.raises(UsageError):
            EvalSettings(**bad)


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


@pytest.mark.skipif(not HAVE_FFMPEG, reason=WHY_NO_FFMPEG)
def test_eval_cache_key_includes_the_decoding_path():
    from milnce.eval.protocol import EvalSettings

    assert EvalSettings().decoder == "ffmpeg" and EvalSettings().window.decoder == "ffmpeg"
    assert EvalSettings().video_key() != EvalSettings(decoder="pyav").video_key()
