"""Annotation and split files: indices in ASCII digits only, one-line errors naming file and line,
and no contents of a file reached through a symbolic link in the message (issue 25 items 14/15)."""

from __future__ import annotations

import pytest

from milnce.errors import UsageError
from milnce.eval import load_benchmark
from milnce.eval.crosstask import read_annotation, read_tasks, read_videos
from tests.eval.test_ucf101 import write_splits

SECRET = "root:$6$secrethash:19000:0:99999:7:::"


def _replace(path, old, new):
    path.write_bytes(path.read_bytes().replace(old.encode(), new.encode(), 1))


@pytest.mark.parametrize("file, old, new, words", [
    ("classInd.txt", "1 ApplyEyeMakeup", "² ApplyEyeMakeup", "classInd.txt, line 1: expected '<index> <ClassName>': the class index"),
    ("classInd.txt", "1 ApplyEyeMakeup", "\u0661 ApplyEyeMakeup", "classInd.txt, line 1: expected '<index> <ClassName>': the class index"),
    ("trainlist01.txt", ".avi 1", ".avi ¹", "trainlist01.txt, line 1: index"),
    ("trainlist01.txt", ".avi 1", ".avi 1_0", "trainlist01.txt, line 1: index"),
])
def test_ucf_indices_ascii_digits(tmp_path, file, old, new, words):
    d = write_splits(tmp_path)
    _replace(d / file, old, new)
    with pytest.raises(UsageError) as ei:
        load_benchmark("ucf101", d)
    assert words in str(ei.value) and "\n" not in str(ei.value)


def test_ucf_symlinked_class_file_is_not_echoed(tmp_path):
    d = write_splits(tmp_path)
    secret = tmp_path / "shadow"
    secret.write_text(SECRET + " x\n")
    (d / "classInd.txt").unlink()
    (d / "classInd.txt").symlink_to(secret)
    with pytest.raises(UsageError) as ei:
        load_benchmark("ucf101", d)
    assert "line 1" in str(ei.value) and "secrethash" not in str(ei.value) and "not shown" in str(ei.value)


def test_crosstask_fields(tmp_path):
    p = tmp_path / "a.csv"
    p.write_text("1_0,1.0,2.0\n")
    with pytest.raises(UsageError, match="line 1: the step must be a whole number"):
        read_annotation(p, 12)
    p.write_text("1,1_0,2.0\n")
    with pytest.raises(UsageError, match="line 1: start must be a number of seconds"):
        read_annotation(p, 12)
    p.write_text("\u0663,1.0,2.0\n")
    with pytest.raises(UsageError, match="ASCII"):
        read_annotation(p, 12)
    t = tmp_path / "tasks.txt"
    t.write_text("1\nTitle\nurl\n\u0663\na,b,c\n")
    with pytest.raises(UsageError, match="line 4: the number of steps"):
        read_tasks(t)
    secret = tmp_path / "shadow"
    secret.write_text(SECRET + "\n")
    link = tmp_path / "videos.csv"
    link.symlink_to(secret)
    with pytest.raises(UsageError) as ei:
        read_videos(link)
    assert "line 1" in str(ei.value) and "secrethash" not in str(ei.value)


def test_csv_header_of_a_symlinked_file_is_not_echoed(tmp_path):
    secret = tmp_path / "shadow"
    secret.write_text(SECRET + "\nx\n")
    link = tmp_path / "msrvtt.csv"
    link.symlink_to(secret)
    with pytest.raises(UsageError) as ei:
        load_benchmark("msrvtt", link)
    assert "missing column" in str(ei.value) and "secrethash" not in str(ei.value)
