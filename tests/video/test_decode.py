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


FORK_AFTER_FILTER_GRAPHS = r"""
import gc, os, signal, sys
from fractions import Fraction
import av, numpy as np
import milnce.video  # noqa: F401  (what a DataLoader worker's parent has imported)

def graph_garbage():
    g = av.filter.Graph()
    frame = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")
    frame.time_base, frame.pts = Fraction(1, 10), 0
    src = g.add_buffer(width=64, height=48, format=frame.format, time_base=Fraction(1, 10))
    g.link_nodes(src, g.add("scale", "32:32"), g.add("buffersink"))
    g.configure()
    g.push(frame)
    g.pull()

gc.disable()  # the cycles stay unreachable, uncollected, when the process forks
for _ in range(3):
    graph_garbage()
pid = os.fork()
if pid == 0:
    signal.alarm(int(sys.argv[1]))  # a hung collection ends here, with SIGALRM
    gc.enable()
    gc.collect()
    os._exit(0)
print(os.waitpid(pid, 0)[1])
"""


@pytest.mark.slow
def test_a_forked_child_does_not_hang_collecting_inherited_filter_graphs():
    """A DataLoader worker forked after decoding inherits unreachable PyAV filter graphs; the
    garbage collector freeing one in the child waited forever for the parent's filter threads
    (measured: without milnce's at-fork hook the child is killed by the alarm after 10 s)."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", FORK_AFTER_FILTER_GRAPHS, "20"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "0", "the forked child did not exit cleanly: " + out.stdout
