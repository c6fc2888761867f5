"""``milnce.listfiles``: Bounded readers of user-given list files."""

from __future__ import annotations

from pathlib import Path

import pytest

from milnce.errors import UsageError
from milnce.listfiles import read_lines

# ----- gap 3: list files with a BOM -------------------------------------------------------------


def test_list_files_with_a_bom_are_accepted(tmp_path):
    from milnce.eval import load_benchmark
    from milnce.extract import collect_inputs

    for n in ("a.mp4", "b.mp4"):
        (tmp_path / n).write_bytes(b"x")
    (tmp_path / "list.csv").write_bytes(b"\xef\xbb\xbfvideo_path,label\na.mp4,1\nb.mp4,2\n")
    (tmp_path / "list.txt").write_bytes(b"\xef\xbb\xbfa.mp4\nb.mp4\n")
    for f in ("list.csv", "list.txt"):
        got = collect_inputs([tmp_path / f])
        assert [Path(i.path).name for i in got] == ["a.mp4", "b.mp4"] and all(i.size == 1 for i in got)
    (tmp_path / "m.csv").write_bytes(b"\xef\xbb\xbfkey,vid_key,video_id,sentence\nr1,m1,video1,a man\n")
    assert load_benchmark("msrvtt", tmp_path / "m.csv").items[0].video_id == "video1"


def test_too_many_entries_refused(tmp_path):
    f = tmp_path / "l.txt"
    f.write_text("a\nb\nc\n")
    assert read_lines(f, "l.txt", what="x", max_entries=3) == ["a", "b", "c"]
    with pytest.raises(UsageError, match=r"l.txt: more than 2 entries"):
        read_lines(f, "l.txt", what="x", max_entries=2)
