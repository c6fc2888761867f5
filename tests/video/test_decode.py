"""``milnce.video.decode``: Video input."""

from __future__ import annotations

import pytest

from ffmpeg_reference import HAVE_FFMPEG, WHY_NO_FFMPEG
from milnce.video import (
    VideoError,
    read_clips,
)
from milnce.video.ffmpeg_exact import ffmpeg_chunks
from video_fixtures import make_audio_only, make_video


@pytest.mark.skipif(not HAVE_FFMPEG, reason=WHY_NO_FFMPEG)
def test_unreadable_inputs_are_video_errors(tmp_path):

    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video" * 50)
    audio = make_audio_only(tmp_path / "a.m4a")
    for bad in (empty, junk, audio):
        with pytest.raises(VideoError):
            list(ffmpeg_chunks(str(bad), 30, 224, 30))


@pytest.mark.skipif(not HAVE_FFMPEG, reason=WHY_NO_FFMPEG)
def test_extreme_aspect_ratio_is_a_video_error_not_a_huge_allocation(tmp_path):

    p = make_video(tmp_path / "thin.mp4", n=3, rate=25, width=2, height=400, pix_fmt="yuv444p")
    with pytest.raises(VideoError, match="aspect ratio"):
        list(ffmpeg_chunks(str(p), 30, 224, 30))


@pytest.mark.parametrize("kind", ["text", "zero_bytes", "audio", "no_frames", "missing", "dir"])
def test_bad_files_clear_errors(bad, kind):
    with pytest.raises(VideoError) as info:
        list(read_clips(bad[kind]))
    assert str(bad[kind]) in str(info.value)
    if kind == "missing":
        assert isinstance(info.value, FileNotFoundError)
    if kind == "dir":
        assert isinstance(info.value, IsADirectoryError)
