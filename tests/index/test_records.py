"""Count lines say "1 video", "1 window", "1 result passes" (never "1 videos"), one test per line family."""

from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np
import pytest

from milnce.extract.runner import CheckReport, ExtractReport
from milnce.index.records import IndexReport


def test_index_report_counts():
    one = IndexReport("ix", added=["a.mp4"], num_videos=1, num_windows=1, windows_added=1, video_seconds=1.0,
                      embed_seconds=1.0, ann={"kind": "ivf", "rows": 1, "recall_at_10": 1.0, "nprobe": 1}).summary()
    assert "index: 1 video, 1 window" in one and "(1 window)" in one and "over 1 window," in one
    assert "videos" not in one.replace("unreadable videos", "") and "windows" not in one
    two = IndexReport("ix", num_videos=2, num_windows=3).summary()
    assert "index: 2 videos, 3 windows" in two


def test_extract_and_check_summaries():
    s = ExtractReport("out", "0/1", inputs=1, share=1, extracted=1, windows=1).summary()
    assert "of 1 video (1 in the list); 1 window," in s
    s = ExtractReport("out", "0/1", inputs=2, share=2, extracted=2, windows=5).summary()
    assert "of 2 videos" in s and "5 windows" in s
    assert "1 of 1 video done" in CheckReport("out", inputs=1, done=1).summary()
    assert "0 of 2 videos done" in CheckReport("out", inputs=2).summary()


def test_pack_says_one_video(tmp_path, capsys):
    from milnce.cli import main
    from milnce.extract.recipe_store import RecipeLayout
    from milnce.recipes import get_recipe

    r = get_recipe("videoclip")
    layout = RecipeLayout(r)
    layout.prepare(str(tmp_path / "f"))
    layout.write(str(tmp_path / "f" / "a.npy"), {r.feature: np.zeros((2, r.dim))}, {"settings": {}})
    assert main(["pack", "videoclip", str(tmp_path / "f"), str(tmp_path / "m")]) == 0
    assert "packed 1 video into" in capsys.readouterr().out


@pytest.fixture
def two_video_index(tmp_path, model):
    from milnce.index import Index
    from milnce.windows import WindowSettings

    videos = tmp_path / "videos"
    videos.mkdir()
    ix = Index.create_for(tmp_path / "ix", model.weights_id, WindowSettings(fps=10.0, num_frames=8, size=32, stride=8),
                          roots=[videos])
    rng = np.random.default_rng(0)
    for name in ("a.mp4", "b.webm"):
        p = videos / name
        p.write_bytes(b"x")
        st = os.stat(p)
        starts = np.arange(3) * 0.8
        ix.add_video(str(p), SimpleNamespace(starts=starts, ends=starts + 0.8, duration=2.4,
                                             embeddings=rng.standard_normal((3, 512)).astype(np.float32)),
                     size=st.st_size, mtime=st.st_mtime, content_hash="")
    ix.close()
    return tmp_path / "ix"


def test_only_one_result_passes_the_filter(two_video_index, model):
    from milnce.index import Index
    from milnce.index.filters import VideoFilter
    from milnce.server.service import SearchService

    with Index.open(two_video_index, model) as index:
        service = SearchService(index, model)
        out = service.search("cut", "", k=5, merge=True, by_video=True, video_filter=VideoFilter(path_glob="*.mp4"))
    assert len(out["results"]) == 1
    assert (out["message"] or "").startswith("Only 1 result passes the filter"), out["message"]


def test_no_match_among_one_video(two_video_index, model):
    from milnce.index import Index
    from milnce.index.filters import NoVideoMatchesError, VideoFilter, require_matches

    with Index.open(two_video_index, model) as index:
        with pytest.raises(NoVideoMatchesError, match=r"among 1 video$"):
            require_matches(index.videos()[:1], VideoFilter(path_glob="*.avi"))
