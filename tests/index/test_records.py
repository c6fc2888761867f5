"""``milnce.index.records``: The records an index holds and returns."""

from __future__ import annotations

from milnce.index.records import IndexReport


def test_index_report_counts():
    one = IndexReport("ix", added=["a.mp4"], num_videos=1, num_windows=1, windows_added=1, video_seconds=1.0,
                      embed_seconds=1.0, ann={"kind": "ivf", "rows": 1, "recall_at_10": 1.0, "nprobe": 1}).summary()
    assert "index: 1 video, 1 window" in one and "(1 window)" in one and "over 1 window," in one
    assert "videos" not in one.replace("unreadable videos", "") and "windows" not in one
    two = IndexReport("ix", num_videos=2, num_windows=3).summary()
    assert "index: 2 videos, 3 windows" in two
