"""``milnce.index.moments``: What a *moment* is."""

from __future__ import annotations

import numpy as np
import pytest

from milnce.index import (
    moment_margin,
    video_moments,
)
from milnce.localize import best_moments

pytestmark = pytest.mark.usefixtures("reuse_model")  # CLI commands reuse the loaded model


def test_crafted_curve_gives_the_documented_moments():
    s = np.array([0, 1, 5, 4.8, 4.7, 2, 0, 9, 8.95, 3, 0], np.float32)
    assert moment_margin(s) == pytest.approx(0.1 * (9 - 3))  # 0.1 x (max - median)
    got = [(a, b, p, round(sc, 3)) for a, b, p, sc in video_moments(s)]
    assert got == [(7, 8, 7, 9.0), (2, 4, 2, 5.0), (9, 9, 9, 3.0), (5, 5, 5, 2.0), (1, 1, 1, 1.0),
                   (0, 0, 0, 0.0), (6, 6, 6, 0.0), (10, 10, 10, 0.0)]
    # a flat curve is one moment; an empty one none; localize uses the same moments
    assert video_moments(np.ones(5, np.float32)) == [(0, 4, 0, 1.0)]
    assert video_moments(np.zeros(0, np.float32)) == []
    starts = np.arange(len(s)) * 1.0
    assert best_moments(starts, starts + 2, s, k=3) == [(7.0, 10.0, 9.0), (2.0, 6.0, 5.0), (9.0, 11.0, 3.0)]
    assert best_moments(starts, starts + 2, s, k=2, merge=False) == [(7.0, 9.0, 9.0), (8.0, 10.0, pytest.approx(8.95))]
