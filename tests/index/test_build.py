"""``milnce.index.build``: Building an index."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from index_fixtures import WINDOW_32, copy_videos
from milnce.errors import UsageError
from milnce.index import (
    Index,
    IndexMismatchError,
    IndexWriteError,
    build_index,
    find_videos,
    index_window,
)
from milnce.windows import WindowSettings
from video_fixtures import make_scene_video

# ----- item 10 and the smaller ones -----------------------------------------------------------


def test_odd_window_size_refused_before_the_folder_exists(tmp_path, model):

    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "a.mp4").write_bytes(b"x")
    with pytest.raises(UsageError, match="even"):
        build_index([tmp_path / "v"], tmp_path / "ix", model, window=WindowSettings.for_model(model, size=63, num_frames=8),
                    progress=False)
    assert not (tmp_path / "ix").exists()


@pytest.mark.usefixtures("reuse_model")
def test_moved_and_deleted_files_still_searchable(tmp_path, video_dir, model):
    vids = copy_videos(video_dir, tmp_path / "v")
    build_index([vids], tmp_path / "ix", model, progress=False, window=WindowSettings.for_model(model, **WINDOW_32))
    (vids / "red.mp4").unlink()
    with Index.open(tmp_path / "ix", model) as idx:
        res = idx.search("red square", k=100, by_video=True)
        assert len(res) == 3
        gone = [m for m in res if m.path.endswith("red.mp4")]
        assert gone and gone[0].exists is False
        assert all(m.exists for m in res if not m.path.endswith("red.mp4"))
        assert {v.path.endswith("red.mp4"): v.exists for v in idx.videos()}[True] is False


# --------------------------------------------------------------------------------------------
# Incremental builds
@pytest.mark.usefixtures("reuse_model")


def test_incremental_skip_touch_move_change_prune(tmp_path, video_dir, model):
    vids = copy_videos(video_dir, tmp_path / "v")
    ix = tmp_path / "ix"
    r1 = build_index([vids], ix, model, progress=False, window=WindowSettings.for_model(model, **WINDOW_32))
    assert len(r1.added) == 3 and r1.num_videos == 3
    with Index.open(ix) as idx:
        before = {v.path: idx.windows(v.id)[2] for v in idx.videos()}
        ids = {v.path: v.id for v in idx.videos()}
    # unchanged
    r2 = build_index([vids], ix, model, progress=False)
    assert r2.unchanged == 3 and not r2.added and not r2.updated
    # touched (mtime only): recognised by content hash, not re-embedded
    os.utime(vids / "red.mp4", (time.time() + 100, time.time() + 100))
    # moved: same content under a new name, recognised by content hash
    (vids / "green.mp4").rename(vids / "green_moved.mp4")
    # changed content
    make_scene_video(vids / "blue.mp4", 2.0, (10, 10, 10), 9)
    # new
    make_scene_video(vids / "new.mp4", 1.5, (200, 200, 0), 5)
    r3 = build_index([vids], ix, model, progress=False)
    assert r3.unchanged == 1
    assert [Path(p).name for p in r3.added] == ["new.mp4"]
    assert [Path(p).name for p in r3.updated] == ["blue.mp4"]
    assert [(Path(a).name, Path(b).name) for a, b in r3.moved] == [("green.mp4", "green_moved.mp4")]
    with Index.open(ix) as idx:
        now = {v.path: v for v in idx.videos()}
        assert now[str(vids / "green_moved.mp4")].id == ids[str(vids / "green.mp4")]
        np.testing.assert_array_equal(idx.windows(now[str(vids / "green_moved.mp4")].id)[2],
                                      before[str(vids / "green.mp4")])
        np.testing.assert_array_equal(idx.windows(now[str(vids / "red.mp4")].id)[2], before[str(vids / "red.mp4")])
        assert len(idx) == sum(v.num_windows for v in now.values())
    # deleted: kept without --prune, dropped with it
    (vids / "new.mp4").unlink()
    r4 = build_index([vids], ix, model, progress=False)
    assert r4.num_videos == 4 and not r4.pruned
    r5 = build_index([vids], ix, model, progress=False, prune=True)
    assert [Path(p).name for p in r5.pruned] == ["new.mp4"] and r5.num_videos == 3
    # other window settings are refused for an existing index
    with pytest.raises(IndexMismatchError, match="window settings"):
        build_index([vids], ix, model, progress=False, window=index_window(ix, model, stride=8))
    # a video that changed into an unreadable file: its stale windows go, the error is logged
    (vids / "red.mp4").write_bytes(b"garbage" * 100)
    r6 = build_index([vids], ix, model, progress=False)
    assert [Path(p).name for p, _ in r6.failed] == ["red.mp4"] and r6.num_videos == 2
    with Index.open(ix) as idx:
        assert idx.video_by_path(vids / "red.mp4") is None
        assert [Path(p).name for p, _ in idx.errors()] == ["red.mp4"]
    r7 = build_index([vids], ix, model, progress=False)  # not retried while unchanged
    assert r7.previously_failed == 1 and not r7.failed


@pytest.mark.usefixtures("reuse_model")
def test_disk_full_leaves_index_intact(tmp_path, video_dir, model, monkeypatch):
    import milnce.index.writer as mi

    vids = copy_videos(video_dir, tmp_path / "v")
    (vids / "green.mp4").unlink()
    ix = tmp_path / "ix"
    real = os.pwrite
    calls = {"n": 0}

    def flaky(fd, data, offset):
        if "vectors-" in os.readlink(f"/proc/self/fd/{fd}") or "times-" in os.readlink(f"/proc/self/fd/{fd}"):
            calls["n"] += 1
        if calls["n"] > 2:  # first video's vectors + times succeed, then the disk is full
            real(fd, bytes(data)[: len(data) // 2], offset)
            raise OSError(28, "No space left on device")
        return real(fd, data, offset)

    monkeypatch.setattr(mi.os, "pwrite", flaky)
    with pytest.raises(IndexWriteError, match="disk is full"):
        build_index([vids], ix, model, progress=False, window=WindowSettings.for_model(model, **WINDOW_32))
    monkeypatch.setattr(mi.os, "pwrite", real)
    with Index.open(ix) as idx:
        assert len(idx.videos()) == 1
        assert os.path.getsize(idx._path("vectors")) == idx.num_rows * 512 * 4
    r = build_index([vids], ix, model, progress=False)
    assert r.unchanged == 1 and len(r.added) == 1


@pytest.mark.usefixtures("reuse_model")
def test_tilde_is_expanded(tmp_path, vids, model, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "videos").mkdir()
    make_scene_video(tmp_path / "videos" / "a.mp4", 2.0, (220, 30, 30), 1)
    assert find_videos(["~/videos"]) == [str(tmp_path / "videos" / "a.mp4")]
    rep = build_index(["~/videos"], "~/my_index", model, progress=False, window=WindowSettings.for_model(model, **WINDOW_32))
    assert rep.failed == [] and len(rep.added) == 1 and (tmp_path / "my_index" / "index.sqlite").is_file()
    with Index.open("~/my_index", model) as idx:
        assert idx.num_videos == 1 and idx.video_by_path("~/videos/a.mp4") is not None
