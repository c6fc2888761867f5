"""``milnce.eval.ucf101``: UCF-101 (Soomro et al., 2012)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from eval_fixtures import SECRET, SMALL, FakeModel, FakeRunner
from milnce.errors import UsageError
from milnce.eval import (
    EvalSettings,
    evaluate,
    format_table,
    load_benchmark,
    result_dict,
    write_outputs,
)
from milnce.eval import run as run_mod
from milnce.eval.ucf101 import ucf_group
from video_fixtures import make_video


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

CLASSES = ["ApplyEyeMakeup", "HandstandPushups", "YoYo"]
FILE_CLASS = {"HandstandPushups": "HandStandPushups"}  # the release's own spelling in file names
TEST_GROUPS = {1: (1, 2), 2: (3, 4), 3: (5, 6)}  # split -> its test groups (officially 7 groups each)


def video_name(cls: str, g: int, c: int) -> str:
    return f"v_{FILE_CLASS.get(cls, cls)}_g{g:02d}_c{c:02d}.avi"


def write_splits(folder: Path, groups: int = 8, clips: int = 2) -> Path:
    """``ucfTrainTestlist/`` in the official format: CRLF lines, train lines with the class index."""
    d = folder / "ucfTrainTestlist"
    d.mkdir(parents=True)
    (d / "classInd.txt").write_bytes("".join(f"{i} {c}\r\n" for i, c in enumerate(CLASSES, 1)).encode())
    for k, test_groups in TEST_GROUPS.items():
        train, test = [], []
        for i, cls in enumerate(CLASSES, 1):
            for g in range(1, groups + 1):
                for c in range(1, clips + 1):
                    rel = f"{cls}/{video_name(cls, g, c)}"
                    (test.append(rel) if g in test_groups else train.append(f"{rel} {i}"))
        (d / f"trainlist0{k}.txt").write_bytes("".join(x + "\r\n" for x in train).encode())
        (d / f"testlist0{k}.txt").write_bytes("".join(x + "\r\n" for x in test).encode())
    return d


def test_split_files_official_format(tmp_path):
    d = write_splits(tmp_path)
    for where in (d, tmp_path):
        bench = load_benchmark("ucf101", where)
        assert len(bench.items) == 3 * 8 * 2 and bench.task == "classification"
    first = bench.items[0]
    assert first.video_id == "v_ApplyEyeMakeup_g01_c01.avi" and first.label == "ApplyEyeMakeup"
    assert first.splits == (2, 1, 1) and first.folder == "ApplyEyeMakeup"
    hs = next(it for it in bench.items if it.label == "HandstandPushups")
    assert hs.video_id.startswith("v_HandStandPushups_") and hs.folder == "HandstandPushups"
    by_id = {it.video_id: it for it in bench.items}
    assert by_id["v_YoYo_g05_c02.avi"].splits == (1, 1, 2)
    assert ucf_group("v_HandStandPushups_g05_c02.avi") == "g05" == ucf_group("YoYo/v_YoYo_g5_c1.avi")
    assert ucf_group("odd_name.avi") == "odd_name"
    small = load_benchmark("ucf101", d, limit=6)
    assert small.limited and len(small.items) == 6 and {it.label for it in small.items} == set(CLASSES)
    assert "UCF-101" in bench.title


def test_split_files_bad_lines(tmp_path):
    d = write_splits(tmp_path)
    with pytest.raises(UsageError, match="needs --annotations"):
        load_benchmark("ucf101")
    with pytest.raises(UsageError, match="no classInd.txt"):
        load_benchmark("ucf101", tmp_path / "ucfTrainTestlist" / ".." / "..")
    good = (d / "trainlist01.txt").read_text()
    (d / "trainlist01.txt").write_text(good.replace("v_ApplyEyeMakeup_g03_c01.avi 1", "v_ApplyEyeMakeup_g03_c01.avi 2"))
    with pytest.raises(UsageError, match=r"trainlist01.txt, line \d+: index '2' does not name class ApplyEyeMakeup"):
        load_benchmark("ucf101", d)
    (d / "trainlist01.txt").write_text(good.replace("YoYo/v_YoYo_g03_c01.avi", "Juggling/v_Juggling_g03_c01.avi"))
    with pytest.raises(UsageError, match=r"line \d+: class 'Juggling' is not in classInd.txt"):
        load_benchmark("ucf101", d)
    (d / "trainlist01.txt").write_text(good + "YoYo/v_YoYo_g01_c01.avi 3\n")  # g01 is a split-1 test group
    with pytest.raises(UsageError, match="both a training and a test video of split 1"):
        load_benchmark("ucf101", d)
    (d / "trainlist01.txt").write_text(good)
    ind = (d / "classInd.txt").read_text()
    (d / "classInd.txt").write_text(ind + "4 ..\n")
    with pytest.raises(UsageError, match=r"classInd.txt, line 4: expected '<index> <ClassName>'"):
        load_benchmark("ucf101", d)
    (d / "classInd.txt").write_text(ind)
    (d / "testlist02.txt").unlink()
    with pytest.raises(FileNotFoundError, match="testlist02.txt"):
        load_benchmark("ucf101", d)


def test_probe_end_to_end_fake_pipeline(tmp_path, monkeypatch):
    d = write_splits(tmp_path / "splits")
    root = tmp_path / "UCF-101"
    rng = np.random.default_rng(0)
    feats = {}
    seed_video = tmp_path / "seed.avi"
    make_video(seed_video, n=8, rate=10, width=32, height=32, codec="mpeg4")
    for cls in CLASSES:
        (root / cls).mkdir(parents=True)
        center = rng.standard_normal(1024) * 2
        for g in range(1, 9):
            for c in (1, 2):
                name = video_name(cls, g, c)
                if (cls, g, c) != ("YoYo", 8, 2):  # one video missing
                    shutil.copy(seed_video, root / cls / name)
                feats[Path(name).stem] = (center + rng.standard_normal(1024)).astype(np.float32)
    seen_groups = []
    real_probe = run_mod.linear_probe

    def spy(*a, **k):
        seen_groups.append(list(k["groups"]))
        return real_probe(*a, **k)

    monkeypatch.setattr(run_mod, "linear_probe", spy)
    runner = FakeRunner(features=feats)
    res = evaluate(FakeModel(["yoyo"]), "ucf101", root, annotations=d,
                   settings=EvalSettings(**{**SMALL, "num_windows": 3}), cache=False, runner=runner, cs=(0.01, 1.0))
    assert res.counts["evaluated"] == 47 and res.counts["missing"] == 1
    assert list(res.clips.missing) == ["v_YoYo_g08_c02.avi"]
    assert res.metrics["mean"] == 100.0 and set(res.metrics) >= {"split1", "split2", "split3"}
    assert res.metrics["probe"]["counts"]["split1"]["test"] == 12
    assert set(seen_groups[0]) == {f"g{g:02d}" for g in range(1, 9)}  # hold-out by UCF group
    assert EvalSettings.for_benchmark("ucf101").num_windows == 10
    d2 = result_dict(res)
    assert d2["published"] == {"min": 82.7, "max": 83.4} and d2["counts"]["missing"] == 1
    assert "82.7-83.4" in format_table(res)
    out = write_outputs(res, tmp_path / "o")
    assert json.loads(out["metrics"].read_text())["benchmark"] == "ucf101"
    with np.load(out["embeddings"], allow_pickle=False) as z:
        assert z["features"].shape == (48, 1024) and z["mask"].sum() == 47 and z["splits"].shape == (48, 3)

def test_ucf101_split_file_huge_line_refused(tmp_path):
    from milnce.eval.ucf101 import load_ucf101

    (tmp_path / "classInd.txt").write_bytes(b"1 " + b"a" * (8 << 20))
    with pytest.raises(UsageError, match="classInd.txt: line 1 is longer than"):
        load_ucf101(tmp_path, None)
