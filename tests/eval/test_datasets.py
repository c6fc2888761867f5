"""``milnce.eval.datasets``: The three benchmarks."""

from __future__ import annotations

import os

import pytest

from eval_fixtures import SECRET, yc_csv
from milnce.errors import UsageError
from milnce.eval import (
    VideoResolver,
    load_benchmark,
)
from milnce.eval.datasets import class_name
from milnce.eval.linear_probe import source_group
from video_fixtures import MB, rss

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
    yc_csv(tmp_path / "b.csv", [(1, 5, 1, "x", "v")])
    with pytest.raises(UsageError, match="row 2.*before start"):
        load_benchmark("youcook2", tmp_path / "b.csv")
    yc_csv(tmp_path / "c.csv", [("nan", 0, 1, "x", "v")])
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


def test_csv_header_of_a_symlinked_file_is_not_echoed(tmp_path):
    secret = tmp_path / "shadow"
    secret.write_text(SECRET + "\nx\n")
    link = tmp_path / "msrvtt.csv"
    link.symlink_to(secret)
    with pytest.raises(UsageError) as ei:
        load_benchmark("msrvtt", link)
    assert "missing column" in str(ei.value) and "secrethash" not in str(ei.value)

def test_eval_annotation_huge_line_refused(tmp_path):
    from milnce.eval.datasets import load_benchmark

    ann = tmp_path / "ann.csv"
    ann.write_bytes(b"a" * (4 << 20))
    before = rss()
    with pytest.raises(UsageError, match="ann.csv: line 1 is longer than"):
        load_benchmark("msrvtt", ann)
    assert rss() - before < 200 * MB
    ann.unlink()
    os.symlink("/dev/zero", ann)
    with pytest.raises(UsageError, match="not a text file"):
        load_benchmark("msrvtt", ann)
