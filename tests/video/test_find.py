"""``milnce.video.find``: One way to find videos."""

from __future__ import annotations

import os

from milnce.extract import collect_inputs
from milnce.video.find import walk_videos
from video_fixtures import make_video

# ------------------------------------------------------------------------------ the walker


def test_walker_ends_on_link_loops_and_follows_links_only_inside_the_roots(tmp_path):
    root = tmp_path / "root"
    (root / "L").mkdir(parents=True)
    make_video(root / "L" / "a.mp4", n=4)
    os.symlink(".", root / "L" / "loop")  # ln -s . L/loop
    os.symlink("..", root / "L" / "up")  # back to root: visited already
    outside = tmp_path / "outside"
    outside.mkdir()
    make_video(outside / "secret.mp4", n=4)
    os.symlink(outside, root / "out")  # a folder link out of the root
    os.symlink(outside / "secret.mp4", root / "s.mp4")  # a file link out of the root
    os.symlink(root / "L" / "a.mp4", root / "inside.mp4")  # a file link inside: followed
    found = list(walk_videos(root))
    assert found == [str(root / "inside.mp4"), str(root / "L" / "a.mp4")]
    # both entry points of extract and index see the same files and end
    from milnce.index.build import find_videos

    real = {os.path.realpath(f) for f in found}
    assert {os.path.realpath(v.path) for v in collect_inputs([root])} == real  # one output per file
    assert find_videos([root]) == sorted(found)
    # with the outside folder among the roots, the link into it is followed
    assert str(root / "out" / "secret.mp4") in list(walk_videos(root, roots=[root, outside]))
