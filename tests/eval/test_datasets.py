"""``milnce.eval.datasets``: The three benchmarks."""

from __future__ import annotations

import os
import resource
from pathlib import Path

import pytest

from milnce.errors import UsageError
from milnce.eval import (
    VideoResolver,
    load_benchmark,
)
from milnce.eval.datasets import class_name
from milnce.eval.linear_probe import source_group
from video_fixtures import make_video

# ------------------------------------------------------------------------------ miniature datasets


def _yc_csv(path: Path, rows: list[tuple]) -> Path:
    path.write_text("end,start,task,text,video_id\n" + "".join(f"{e},{s},{t},{x},{v}\n" for e, s, t, x, v in rows))
    return path


YC_ROWS = [  # end, start, task, text, video_id
    (4, 0, 226, "cut tomato", "vidA"),
    (9, 5, 226, "add salt", "vidA"),
    (3, 1, 105, "pour water into bowl", "vidB"),
    (2, 2, 105, "open door", "vidB"),        # zero-length clip: all windows start at 2
    (6, 1, 105, "the man is cooking", "vidC"),
    (5, 0, 226, "playing guitar", "vidGone"),  # no such video
]


@pytest.fixture()
def youcook(tmp_path):
    root = tmp_path / "yc"
    (root / "validation" / "226").mkdir(parents=True)
    (root / "validation" / "105").mkdir(parents=True)
    (root / "validation" / "226" / "vidA.mp4").write_bytes(b"x")
    (root / "validation" / "105" / "vidB.webm").write_bytes(b"x")
    (root / "vidC.mkv").write_bytes(b"x")  # flat layout also found
    return root, _yc_csv(tmp_path / "yc.csv", YC_ROWS)


# ------------------------------------------------------------------------------ annotations


def test_shipped_annotations_load():
    yc, mv, hm = (load_benchmark(n) for n in ("youcook2", "msrvtt", "hmdb51"))
    assert (len(yc.items), len(mv.items), len(hm.items)) == (3350, 1000, 6766)
    assert len({it.video_id for it in yc.items}) == 436
    assert yc.items[0].start == 47 and yc.items[0].end == 60 and yc.items[0].folder == "226"
    assert mv.items[0].video_id == "video9770" and mv.items[0].start is None and mv.items[0].text
    assert hm.items[0].label == "brush_hair" and hm.items[0].folder == "brush_hair_test"
    assert len({it.label for it in hm.items}) == 51
    assert all(it.splits[k] in (0, 1, 2) for it in hm.items for k in range(3))
    small = load_benchmark("hmdb51", limit=102)
    assert len(small.items) == 102 and len({it.label for it in small.items}) == 51 and small.limited
    assert [it.row for it in small.items] == sorted(it.row for it in small.items)


def test_bad_annotations(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_benchmark("msrvtt", tmp_path / "nope.csv")
    (tmp_path / "a.csv").write_text("video_id,caption\nv1,hello\n")
    with pytest.raises(UsageError, match="missing column.*sentence"):
        load_benchmark("msrvtt", tmp_path / "a.csv")
    _yc_csv(tmp_path / "b.csv", [(1, 5, 1, "x", "v")])
    with pytest.raises(UsageError, match="row 2.*before start"):
        load_benchmark("youcook2", tmp_path / "b.csv")
    _yc_csv(tmp_path / "c.csv", [("nan", 0, 1, "x", "v")])
    with pytest.raises(UsageError, match="end must be"):
        load_benchmark("youcook2", tmp_path / "c.csv")
    with pytest.raises(UsageError, match="unknown benchmark"):
        load_benchmark("kinetics")
    with pytest.raises(UsageError, match="limit"):
        load_benchmark("msrvtt", limit=0)


def test_hmdb_label_suffix_and_layouts(tmp_path):
    assert class_name("brush_hair_test") == "brush_hair" and class_name("walk") == "walk"
    assert source_group("April_09_brush_hair_u_nm_np1_ba_goo_2.avi") == "April_09_brush_hair_u_nm_np1_ba_goo"
    rows = "video_id,label,split1,split2,split3\na_0.avi,run_test,1,1,2\nb_0.avi,walk_test,2,1,1\nc_0.avi,sit_test,1,2,1\n"
    (tmp_path / "h.csv").write_text(rows)
    bench = load_benchmark("hmdb51", tmp_path / "h.csv")
    root = tmp_path / "hm"
    for sub, name in (("run", "a_0.avi"), ("walk_test", "b_0.avi"), ("", "c_0.mp4")):
        (root / sub).mkdir(parents=True, exist_ok=True)
        (root / sub / name).write_bytes(b"x")
    paths = VideoResolver(root, "hmdb51").resolve_all(bench.items)
    assert paths[0] == root / "run" / "a_0.avi"            # class folder (label without _test)
    assert paths[1] == root / "walk_test" / "b_0.avi"      # folder named as the csv label
    assert paths[2] == root / "c_0.mp4"                    # flat, re-encoded


def test_youcook_and_msrvtt_layouts(youcook, tmp_path):
    root, csv = youcook
    bench = load_benchmark("youcook2", csv)
    paths = VideoResolver(root, "youcook2").resolve_all(bench.items)
    assert paths[0] == paths[1] == root / "validation" / "226" / "vidA.mp4"
    assert paths[2] == root / "validation" / "105" / "vidB.webm"
    assert paths[4] == root / "vidC.mkv" and paths[5] is None
    deep = tmp_path / "mv" / "some" / "where"
    deep.mkdir(parents=True)
    (deep / "video7.mp4").write_bytes(b"x")
    (tmp_path / "mv" / "video8.mp4").write_bytes(b"x")
    (tmp_path / "m.csv").write_text("key,vid_key,video_id,sentence\nr0,m7,video7,a\nr1,m8,video8,b\nr2,m9,video9,c\n")
    paths = VideoResolver(tmp_path / "mv", "msrvtt").resolve_all(load_benchmark("msrvtt", tmp_path / "m.csv").items)
    assert paths == {0: deep / "video7.mp4", 1: tmp_path / "mv" / "video8.mp4", 2: None}
    with pytest.raises(FileNotFoundError):
        VideoResolver(tmp_path / "nope", "msrvtt")


@pytest.fixture(scope="module")
def msrvtt(tmp_path_factory):
    d = tmp_path_factory.mktemp("msrvtt")
    root = d / "videos"
    root.mkdir()
    make_video(root / "video1.mp4", n=30, rate=10, width=32, height=32)   # 3.0 s
    make_video(root / "video2.mp4", n=12, rate=10, width=32, height=32)   # 1.2 s
    make_video(root / "video3.mp4", n=8, rate=10, width=32, height=32)    # 0.8 s
    (root / "video4.mp4").write_bytes(b"not a video at all")
    csv = d / "m.csv"
    csv.write_text("key,vid_key,video_id,sentence\n" + "".join(
        f"ret{i},msr{i},video{i},{t}\n" for i, t in enumerate(
            ["a man is cooking", "the woman pours water", "a red square", "open the door", "a car drifting"], 1)))
    return root, csv

SECRET = "root:$6$secrethash:19000:0:99999:7:::"


def test_csv_header_of_a_symlinked_file_is_not_echoed(tmp_path):
    secret = tmp_path / "shadow"
    secret.write_text(SECRET + "\nx\n")
    link = tmp_path / "msrvtt.csv"
    link.symlink_to(secret)
    with pytest.raises(UsageError) as ei:
        load_benchmark("msrvtt", link)
    assert "missing column" in str(ei.value) and "secrethash" not in str(ei.value)

MB = 1024  # ru_maxrss is in KiB on Linux


def _rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


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
