"""Every user-given list file is read bounded: a device, FIFO or folder, an endless line, NUL bytes
and too many entries are refused in one line naming the file, with memory staying flat."""

from __future__ import annotations

import os
import resource
from pathlib import Path

import pytest

from milnce.cli import main
from milnce.errors import UsageError
from milnce.extract.inputs import collect_inputs
from milnce.listfiles import MAX_CSV_ROW, MAX_PATH_LINE, read_lines

MB = 1024  # ru_maxrss is in KiB on Linux


def _rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_extract_list_symlink_to_dev_zero_refused(tmp_path):
    lst = tmp_path / "videos.txt"
    os.symlink("/dev/zero", lst)
    before = _rss()
    with pytest.raises(UsageError, match="videos.txt: not a text file"):
        collect_inputs([str(lst)])
    assert _rss() - before < 200 * MB


def test_extract_list_fifo_and_folder_refused(tmp_path):
    fifo = tmp_path / "videos.txt"
    os.mkfifo(fifo)  # opening it would block forever: refused before open
    with pytest.raises(UsageError, match="FIFO"):
        collect_inputs([str(fifo)])
    folder = tmp_path / "d.csv"
    folder.mkdir()
    (folder / "a.mp4").write_bytes(b"")  # a folder named .csv is walked as a folder, not read as a list
    assert [Path(v.path).name for v in collect_inputs([str(folder)])] == ["a.mp4"]


@pytest.mark.parametrize("name", ["huge.txt", "huge.csv"])
def test_extract_list_huge_line_refused_in_one_line(tmp_path, capsys, name):
    lst = tmp_path / name
    with open(lst, "wb") as f:  # 8 MiB in one line, no newline: never read whole
        f.truncate(0)
        f.write(b"video_path\n" if name.endswith(".csv") else b"")
        block = b"a" * (1 << 20)
        for _ in range(8):
            f.write(block)
    before = _rss()
    assert main(["extract", str(lst), "--out", str(tmp_path / "out")]) == 2
    line = _one_line(capsys)
    bound = MAX_CSV_ROW if name.endswith(".csv") else MAX_PATH_LINE
    assert name in line and f"longer than {bound:,} characters" in line
    assert _rss() - before < 200 * MB
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_extract_csv_multiline_field_bounded(tmp_path):
    lst = tmp_path / "v.csv"
    lst.write_text('video_path\n"' + ("x" * 1000 + "\n") * 200 + '"\n')  # one quoted field of 200 KB
    with pytest.raises(UsageError, match="v.csv: not a CSV file"):
        collect_inputs([str(lst)])


def test_extract_list_nul_and_not_utf8(tmp_path):
    lst = tmp_path / "v.txt"
    lst.write_bytes(b"a.mp4\n\0\0\n")
    with pytest.raises(UsageError, match="line 2 holds NUL bytes"):
        collect_inputs([str(lst)])
    lst.write_bytes(b"a.mp4\n\xff\xfe\n")
    with pytest.raises(UsageError, match="UTF-8"):
        collect_inputs([str(lst)])


def test_extract_lists_still_read(tmp_path):
    (tmp_path / "a.mp4").write_bytes(b"")
    (tmp_path / "b.mp4").write_bytes(b"")
    txt = tmp_path / "v.txt"
    txt.write_text("# videos\r\na.mp4\r\n\r\nb.mp4")
    assert [Path(v.path).name for v in collect_inputs([str(txt)])] == ["a.mp4", "b.mp4"]
    csv_ = tmp_path / "v.csv"
    csv_.write_bytes("\ufeffcaption, video_path \n\"x, y\",a.mp4\n\n\"z\",b.mp4\n".encode())
    assert [Path(v.path).name for v in collect_inputs([str(csv_)])] == ["a.mp4", "b.mp4"]
    tsv = tmp_path / "v.tsv"
    tsv.write_text("video_path\tother\na.mp4\t1\n")
    assert [Path(v.path).name for v in collect_inputs([str(tsv)])] == ["a.mp4"]


def test_too_many_entries_refused(tmp_path):
    f = tmp_path / "l.txt"
    f.write_text("a\nb\nc\n")
    assert read_lines(f, "l.txt", what="x", max_entries=3) == ["a", "b", "c"]
    with pytest.raises(UsageError, match=r"l.txt: more than 2 entries"):
        read_lines(f, "l.txt", what="x", max_entries=2)


def test_train_csv_huge_line_refused(tmp_path):
    from milnce.train.data import load_split

    data = tmp_path / "train.csv"
    data.write_bytes(b"video_path,start,end,text\n" + b"a" * (20 << 20))  # 20 MiB in one line
    before = _rss()
    with pytest.raises(UsageError, match="train.csv: line 2 is longer than"):
        load_split(data)
    assert _rss() - before < 200 * MB


def test_eval_annotation_huge_line_refused(tmp_path):
    from milnce.eval.datasets import load_benchmark

    ann = tmp_path / "ann.csv"
    ann.write_bytes(b"a" * (4 << 20))
    before = _rss()
    with pytest.raises(UsageError, match="ann.csv: line 1 is longer than"):
        load_benchmark("msrvtt", ann)
    assert _rss() - before < 200 * MB
    ann.unlink()
    os.symlink("/dev/zero", ann)
    with pytest.raises(UsageError, match="not a text file"):
        load_benchmark("msrvtt", ann)


def test_ucf101_split_file_huge_line_refused(tmp_path):
    from milnce.eval.ucf101 import load_ucf101

    (tmp_path / "classInd.txt").write_bytes(b"1 " + b"a" * (8 << 20))
    with pytest.raises(UsageError, match="classInd.txt: line 1 is longer than"):
        load_ucf101(tmp_path, None)


def test_mirror_list_bounded(tmp_path, monkeypatch):
    from milnce import mirrors
    from milnce.cache import cache_dir

    monkeypatch.delenv(mirrors.MIRRORS_ENV, raising=False)
    path = cache_dir() / mirrors.MIRRORS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# mine\nhttps://example.invalid/w  # note\n\n")
    assert [e for e, _ in mirrors.user_entries()] == ["https://example.invalid/w"]
    path.unlink()
    path.symlink_to("/dev/zero")
    with pytest.raises(mirrors.MirrorError, match="mirror list .*not a text file"):
        mirrors.user_entries()
    path.unlink()
    path.write_bytes(b"h" * (1 << 20))
    with pytest.raises(mirrors.MirrorError, match="line 1 is longer than"):
        mirrors.user_entries()
