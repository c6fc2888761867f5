"""``milnce.eval.crosstask``: CrossTask (Zhukov et al., CVPR 2019)."""

from __future__ import annotations

import numpy as np
import pytest

from eval_fixtures import SECRET, write_release
from milnce.errors import UsageError
from milnce.eval.crosstask import (
    AnnotationIssues,
    ground_truth,
    load_release,
    n_positions,
    position_starts,
    read_annotation,
    read_tasks,
    read_videos,
    step_recall,
)

# ------------------------------------------------------------------------------ readers


def test_readers_release_format(tmp_path):
    rel = write_release(tmp_path, [("16815", "aaa"), ("23521", "bbb")], {"16815_aaa": "1,0.5,2.7\n3,4.0,5.0\n"})
    tasks = read_tasks(rel / "tasks_primary.txt")
    assert list(tasks) == ["16815", "23521"]
    assert tasks["16815"].steps == ("cut tomato", "add salt", "pour water") and tasks["16815"].title == "Jack Up a Car"
    assert tasks["23521"].url.startswith("https://www.wikihow.com/")
    vids = read_videos(rel / "videos_val.csv")
    assert [(v.task_id, v.video_id, v.line) for v in vids] == [("16815", "aaa", 1), ("23521", "bbb", 2),
                                                                ("91537", "relVid", 3)]
    assert vids[0].url == "https://www.youtube.com/watch?v=aaa"
    assert read_annotation(rel / "annotations" / "16815_aaa.csv", 3) == [(1, 0.5, 2.7, 1), (3, 4.0, 5.0, 2)]
    for where in (rel, tmp_path):  # the release folder or the folder it was unzipped into
        r = load_release(where)
        assert [v.video_id for v in r.videos] == ["aaa", "bbb"] and r.other_tasks == 1
    assert [v.video_id for v in load_release(tmp_path, limit=1).videos] == ["aaa"]
    assert [v.video_id for v in load_release(tmp_path, videos_file="videos.csv").videos] == ["aaa", "bbb", "trainVid"]
    # no trailing blank line after the last block, CRLF line ends: still read
    (rel / "tasks_primary.txt").write_bytes((rel / "tasks_primary.txt").read_text().rstrip("\n").replace("\n", "\r\n")
                                            .encode())
    assert read_tasks(rel / "tasks_primary.txt")["23521"].steps == ("open door", "playing guitar")


def test_bad_release_files(tmp_path):
    rel = write_release(tmp_path, [("16815", "aaa")], {})
    f = rel / "tasks_primary.txt"
    good = f.read_text()
    f.write_text(good.replace("\n3\n", "\n4\n"))
    with pytest.raises(UsageError, match=r"tasks_primary.txt, line 5: task 16815 says 4 steps but lists 3"):
        read_tasks(f)
    f.write_text(good.replace("\n3\n", "\nthree\n"))
    with pytest.raises(UsageError, match=r"line 4: the number of steps must be a whole number"):
        read_tasks(f)
    f.write_text(good + "99999\nTruncated\n")
    with pytest.raises(UsageError, match=r"line 13: incomplete task block"):
        read_tasks(f)
    f.write_text(good + good)
    with pytest.raises(UsageError, match="appears twice"):
        read_tasks(f)
    a = rel / "annotations" / "16815_aaa.csv"
    for text, pattern in (("1,0,2\n4,3,5\n", r"16815_aaa.csv, line 2: step 4 does not exist: the task has steps 1..3"),
                          ("0,1,2\n", r"line 1: step 0 does not exist"),
                          ("1,0,2\n\n2,x,5\n", r"line 3: start must be a number"),
                          ("1,0,nan\n", r"line 1: end must be finite"),
                          ("1,0\n", r"line 1: expected step,start,end")):
        a.write_text(text)
        with pytest.raises(UsageError, match=pattern):
            read_annotation(a, 3)
    for bad in ("16815,../../etc/passwd,u\n", "16815,..,u\n", "../x,abc,u\n"):
        (rel / "videos_val.csv").write_text("16815,fine,u\n" + bad)
        with pytest.raises(UsageError, match=r"videos_val.csv, line 2: .* is not a plain name"):
            read_videos(rel / "videos_val.csv")
    (rel / "videos_val.csv").write_text("16815\n")
    with pytest.raises(UsageError, match=r"videos_val.csv, line 1: expected task,video_id,url"):
        read_videos(rel / "videos_val.csv")
    with pytest.raises(FileNotFoundError):
        load_release(tmp_path / "nope")
    with pytest.raises(UsageError, match="not a CrossTask release folder"):
        load_release(rel / "annotations")


# ------------------------------------------------------------------------------ protocol pieces


def test_positions_windows_and_ground_truth_by_hand():
    assert [n_positions(d) for d in (0.0, 0.4, 1.0, 7.0, 7.2, float("nan"))] == [0, 1, 1, 7, 8, 0]
    # 3.2 s windows centred on t + 0.5, kept inside a 7.5 s video
    np.testing.assert_allclose(position_starts(8, 7.5, 3.2), [0, 0, 0.9, 1.9, 2.9, 3.9, 4.3, 4.3])
    np.testing.assert_allclose(position_starts(2, 1.5, 3.2), [0, 0])  # video shorter than a window
    issues = AnnotationIssues()
    rows = [(1, 0.5, 2.2, 1), (2, 4.0, 4.0, 2), (3, 5.5, 9.1, 3), (2, 3.0, 1.0, 4), (1, 7.0, 8.0, 5)]
    y = ground_truth(rows, 3, 7, "t_v.csv", issues)
    # step 1: floor(0.5)=0 .. ceil(2.2)=3 -> positions 0,1,2; step 2: [4, 4) is empty;
    # step 3: 5 .. ceil(9.1)=10 cut at 7 -> 5,6; row 4 start > end skipped; row 5 starts at 7 = T: outside
    assert y[:, 0].tolist() == [1, 1, 1, 0, 0, 0, 0]
    assert y[:, 1].tolist() == [0] * 7
    assert y[:, 2].tolist() == [0, 0, 0, 0, 0, 1, 1]
    assert issues.start_after_end == ["t_v.csv:4"] and issues.past_video_end == ["t_v.csv:5"]
    assert issues.cut_at_video_end == ["t_v.csv:3"]


def test_recall_hand_computed():
    # task A, video 1: steps 1 and 3 annotated (2 distinct), prediction hits step 1 only
    y1 = np.zeros((6, 3), np.uint8)
    y1[0:2, 0] = 1
    y1[4:6, 2] = 1
    # task A, video 2: all three annotated, prediction hits steps 2 and 3
    y2 = np.zeros((5, 3), np.uint8)
    y2[0, 0] = y2[2, 1] = y2[4, 2] = 1
    matched, annotated = step_recall([y1, y2], [np.array([1, 2, 3]), np.array([1, 2, 4])])
    assert (matched, annotated) == (1 + 2, 2 + 3)  # pooled: 3 / 5 = 60 %

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
