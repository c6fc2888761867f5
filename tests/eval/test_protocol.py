"""``milnce.eval.protocol``: The public evaluation protocol."""

from __future__ import annotations

import numpy as np
import pytest

from eval_fixtures import SMALL
from ffmpeg_reference import HAVE_FFMPEG, WHY_NO_FFMPEG
from milnce.errors import UsageError
from milnce.eval import (
    EvalSettings,
    window_starts,
)

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


@pytest.mark.skipif(not HAVE_FFMPEG, reason=WHY_NO_FFMPEG)
def test_eval_cache_key_includes_the_decoding_path():
    from milnce.eval.protocol import EvalSettings

    assert EvalSettings().decoder == "ffmpeg" and EvalSettings().window.decoder == "ffmpeg"
    assert EvalSettings().video_key() != EvalSettings(decoder="pyav").video_key()
