"""``milnce.extract.inputs``: Which videos an extraction covers, where each one's output goes, and which rank
takes it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from milnce.errors import UsageError
from milnce.extract import (
    Shard,
    VideoInput,
    collect_inputs,
    resolve_shard,
    shard_inputs,
)
from video_fixtures import MB, SRC, rss

# ------------------------------------------------------------------------------ shards


def test_shards_disjoint_complete_balanced():
    rng = np.random.default_rng(0)
    items = [VideoInput(f"/v/{i}.mp4", f"{i}.npz", int(s)) for i, s in enumerate(rng.lognormal(15, 1.5, 500))]
    for n in (1, 2, 3, 7, 16):
        shares = [shard_inputs(items, i, n) for i in range(n)]
        names = [x.path for s in shares for x in s]
        assert sorted(names) == sorted(x.path for x in items) and len(set(names)) == len(items)
        loads = [sum(x.size for x in s) for s in shares]
        assert max(loads) - min(loads) <= max(x.size for x in items)  # greedy LPT bound
        # deterministic and independent of the input order
        assert shard_inputs(items[::-1], n - 1, n) == [x for x in items if x in set(shares[-1])][::-1] or \
            sorted(x.path for x in shard_inputs(items[::-1], n - 1, n)) == sorted(x.path for x in shares[-1])
    with pytest.raises(ValueError):
        shard_inputs(items, 2, 2)


def test_resolve_shard_env():
    assert resolve_shard(None, {}) == Shard(0, 1, None, "single")
    assert resolve_shard("1/4", {}).label == "1/4"
    s = resolve_shard(None, {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "3"})
    assert (s.index, s.count, s.local_rank) == (3, 8, 3)
    s = resolve_shard(None, {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_COUNT": "10"})
    assert (s.index, s.count) == (4, 10)
    s = resolve_shard("1/2", {"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "3", "RANK": "1", "WORLD_SIZE": "2"})
    assert (s.index, s.count) == ((1 * 3 + 2) * 2 + 1, 12)
    for bad in ("2/2", "x", "1/0", "-1/3"):
        with pytest.raises(ValueError):
            resolve_shard(bad, {})
    with pytest.raises(ValueError, match="RANK"):
        resolve_shard(None, {"RANK": "x", "WORLD_SIZE": "2"})


def test_collect_inputs(tree, tmp_path):
    got = collect_inputs([tree / "good"])
    assert [x.rel for x in got] == ["a.npz", "c.npz", "sub/b.npz"]
    # list files: relative to the list's folder; csv with a video_path column; clashing names keep suffixes
    (tree / "good" / "a.webm").write_bytes((tree / "good" / "c.webm").read_bytes())
    try:
        lst = tree / "list.txt"
        lst.write_text("# videos\ngood/a.mp4\n\ngood/a.webm\n" + str(tree / "good" / "sub" / "b.mp4") + "\n")
        assert [x.rel for x in collect_inputs([lst])] == ["a.mp4.npz", "a.webm.npz", "sub/b.npz"]
    finally:  # the shared tree as it was
        (tree / "good" / "a.webm").unlink()
        (tree / "list.txt").unlink(missing_ok=True)
    c = tmp_path / "l.csv"
    c.write_text(f"id,video_path\n1,{tree / 'good' / 'a.mp4'}\n2,{tree / 'good' / 'a.mp4'}\n")
    assert [x.rel for x in collect_inputs([c])] == ["a.npz"]
    c.write_text("id,path\n1,x.mp4\n")
    with pytest.raises(ValueError, match="video_path"):
        collect_inputs([c])
    with pytest.raises(ValueError, match="no such"):
        collect_inputs([tmp_path / "nope"])


def test_extract_list_symlink_to_dev_zero_refused(tmp_path):
    lst = tmp_path / "videos.txt"
    os.symlink("/dev/zero", lst)
    before = rss()
    with pytest.raises(UsageError, match="videos.txt: not a text file"):
        collect_inputs([str(lst)])
    assert rss() - before < 200 * MB


def test_extract_list_fifo_and_folder_refused(tmp_path):
    fifo = tmp_path / "videos.txt"
    os.mkfifo(fifo)  # opening it would block forever: refused before open
    with pytest.raises(UsageError, match="FIFO"):
        collect_inputs([str(fifo)])
    folder = tmp_path / "d.csv"
    folder.mkdir()
    (folder / "a.mp4").write_bytes(b"")  # a folder named .csv is walked as a folder, not read as a list
    assert [Path(v.path).name for v in collect_inputs([str(folder)])] == ["a.mp4"]


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


# ------------------------------------------------------------------------------ extraction


@pytest.mark.slow
def test_huge_shard_count_uses_memory_of_the_videos_not_of_the_shards(folder):
    code = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))\n"
        "from milnce.extract.inputs import collect_inputs, resolve_shard, shard_inputs\n"
        "s = resolve_shard('0/99999999999999999999', env={})\n"
        "items = collect_inputs([sys.argv[1]])\n"
        "print(len(shard_inputs(items, s.index, s.count)), len(shard_inputs(items, 5, s.count)))\n"
    )
    r = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": SRC})
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["1", "0"]
