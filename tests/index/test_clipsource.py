"""``milnce.index.clipsource`` called directly: the indexed video a clip names, where the clip
goes, and the indexed file opened by the server's rule (or refused, saying why)."""

from __future__ import annotations

import os

import pytest

from milnce.errors import UsageError
from milnce.index.clipsource import NotIndexedError, clip_output, clip_source, find_video, open_clip_source
from milnce.video.cut import SourceChangedError
from server_fixtures import indexed_library


@pytest.fixture(scope="module")
def lib(tmp_path_factory, model):
    yield from indexed_library(tmp_path_factory.mktemp("clipsrc"), model, {"a.mp4": {"n": 24, "width": 64, "height": 48}})


def test_find_video_by_id_or_path(lib):
    index, vid = lib["index"], lib["ids"]["a.mp4"]
    path = str(lib["videos"] / "a.mp4")
    assert find_video(index, vid, "IX").id == vid and find_video(index, path, "IX").id == vid
    with pytest.raises(NotIndexedError, match="no video with id 999"):
        find_video(index, 999, "IX")
    with pytest.raises(NotIndexedError, match=r"^/nowhere\.mp4 is not in the index IX \(give an indexed path or id\)$"):
        find_video(index, "/nowhere.mp4", "IX")


def test_clip_output_names_checks_and_refuses(lib, tmp_path):
    rec = lib["index"].video(lib["ids"]["a.mp4"])
    named = clip_output(str(tmp_path), rec, 0.5, 1.5, padding=10.0)
    assert os.path.dirname(named) == str(tmp_path) and named.endswith(".mp4") and "a_" in os.path.basename(named)
    assert clip_output(str(tmp_path / "x.MKV"), rec, 0, 1) == str(tmp_path / "x.MKV")
    with pytest.raises(UsageError, match=r"give a \.mp4, \.m4v, \.mov or \.mkv file, or an existing folder"):
        clip_output(str(tmp_path / "x.avi"), rec, 0, 1)
    (tmp_path / "x.mp4").write_bytes(b"")
    with pytest.raises(UsageError, match="exists .*--overwrite"):
        clip_output(str(tmp_path / "x.mp4"), rec, 0, 1)
    assert clip_output(str(tmp_path / "x.mp4"), rec, 0, 1, overwrite=True) == str(tmp_path / "x.mp4")


def test_the_indexed_file_is_opened_or_refused(lib, tmp_path):
    index = lib["index"]
    src = clip_source(index, index.video(lib["ids"]["a.mp4"]))
    assert src.roots and src.content_hash == (index.row(src.record.id).hash or None)
    with open_clip_source(src) as fh:
        assert os.fstat(fh.fileno()).st_size == src.record.size
    moved = lib["videos"] / "a.mp4"
    aside = tmp_path / "a.mp4"
    os.rename(moved, aside)
    try:
        with pytest.raises(SourceChangedError, match="the indexed video is gone"):
            open_clip_source(src)
    finally:
        os.rename(aside, moved)
