"""``milnce.extract.runner``: ``extract``."""

from __future__ import annotations

import csv
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from milnce.extract import (
    check,
    extract,
    iter_feature_files,
    read_feature_file,
    shard_inputs,
)
from milnce.extract.runner import CheckReport, ExtractReport
from milnce.video.find import walk_videos
from milnce.video.result import check_crc
from video_fixtures import SMALL_WINDOWS as S
from video_fixtures import (
    SRC,
    assert_same_files,
    ckpt_args,
    flip_inside_member,
    make_video,
    npz_files,
)

# ------------------------------------------------------------------------------ extract


def test_extract_skip_redo_failures(model, tree, tmp_path):
    out = tmp_path / "out"
    rep = extract([tree / "good", tree / "bad"], out, model, S, workers=1)
    assert (rep.extracted, rep.failed, rep.skipped) == (3, 4, 0)
    with open(out / "failures.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(Path(r["path"]).name for r in rows) == ["empty.mp4", "text.mp4", "trunc.mp4", "zero.mp4"]
    assert all(r["reason"] for r in rows)
    ff = read_feature_file(out / "a.npz")
    ref = model.encode_video_file(tree / "good" / "a.mp4", fps=10, num_frames=8, size=32, stride=4, features=True)
    np.testing.assert_allclose(ff.embeddings, ref.embeddings, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ff.features, ref.features, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(ff.starts, ref.starts)
    assert ff.meta["weights"] == model.weights_id and ff.meta["settings"]["stride"] == 4
    assert ff.path == str(tree / "good" / "a.mp4")
    assert sorted(Path(v).name for v, _ in iter_feature_files(out)) == ["a.mp4", "b.mp4", "c.webm"]
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.npz")}
    rep = extract([tree / "good"], out, model, S, workers=0)
    assert (rep.skipped, rep.extracted) == (3, 0)
    assert mtimes == {p: p.stat().st_mtime_ns for p in out.rglob("*.npz")}
    # changed settings or features: redone, never mixed
    rep = extract([tree / "good"], out, model, S.with_(stride=8), workers=0)
    assert (rep.extracted, rep.redone) == (3, 3)
    rep = extract([tree / "good"], out, model, S.with_(stride=8), features=["video_embedding"], workers=0)
    assert rep.redone == 3 and read_feature_file(out / "a.npz").features is None
    # a changed video is redone (the shared tree's times are put back after)
    a = tree / "good" / "a.mp4"
    st = a.stat()
    os.utime(a, ns=(time.time_ns(), time.time_ns()))
    try:
        rep = extract([tree / "good"], out, model, S.with_(stride=8), features=["video_embedding"], workers=0)
        assert (rep.redone, rep.skipped) == (1, 2)
        c = check(out, [tree / "good", tree / "bad"])
        assert c.done == 3 and len(c.missing) == 4 and not c.complete and len(c.failed) == 0  # new failures.csv: none
        assert not list(out.rglob(".*"))
    finally:
        os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.mark.slow
def test_torchrun_two_ranks_equal_one(checkpoint, model, tree, tmp_path):
    pytest.importorskip("torch.distributed.run")
    one = tmp_path / "one"
    extract([tree / "good"], one, model, S, workers=0)
    two = tmp_path / "two"
    e = dict(os.environ, PYTHONPATH=SRC, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "-m", "milnce.cli", "extract", str(tree / "good"), "--out", str(two), "--workers", "0",
                        *ckpt_args(checkpoint)], env=e, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert_same_files(npz_files(one), npz_files(two))
    assert sorted(x for x in os.listdir(two) if x.endswith(".csv")) == ["failures-rank0.csv", "failures-rank1.csv"]
    assert check(two, [tree / "good"]).complete


def test_walker_reports_unreadable_folders_and_keeps_non_utf8_names(tmp_path, monkeypatch):
    root = tmp_path / "r"
    (root / "locked").mkdir(parents=True)
    name = os.fsdecode(b"caf\xe9.mp4")  # Latin-1 bytes: not UTF-8
    make_video(os.path.join(os.fsencode(root), b"caf\xe9.mp4").decode("utf-8", "surrogateescape"), n=4)
    real = os.scandir

    def scandir(p):
        if str(p).endswith("locked"):
            raise PermissionError(13, "Permission denied", str(p))
        return real(p)

    monkeypatch.setattr(os, "scandir", scandir)
    errors = []
    found = list(walk_videos(root, on_error=lambda p, why: errors.append((p, why))))
    assert found == [os.path.join(str(root), name)]
    assert errors and errors[0][0].endswith("locked") and "Permission denied" in errors[0][1]


# ------------------------------------------------------------------------------ extraction


def test_verify_redoes_a_flipped_byte_and_every_rerun_redoes_a_truncated_file(model, folder, tmp_path, caplog):
    out = tmp_path / "out"
    rep = extract([folder], out, model, S, workers=0)
    assert rep.extracted == 1
    flip_inside_member(out / "a.npz")
    c = check(out, [folder], verify=True)
    assert c.done == 0 and c.stale and "a.mp4" in c.stale[0][0]
    with caplog.at_level(logging.WARNING, logger="milnce.extract"):
        rep = extract([folder], out, model, S, workers=0, verify=True)
    assert rep.redone == 1 and check_crc(str(out / "a.npz")) is None
    data = (out / "a.npz").read_bytes()
    (out / "a.npz").write_bytes(data[: len(data) - 100])  # truncated: seen without --verify
    assert extract([folder], out, model, S, workers=0).redone == 1


def test_shards_beyond_the_videos_match_the_balanced_split():
    from milnce.extract.inputs import VideoInput

    items = [VideoInput(f"/v/{i}.mp4", f"{i}.npz", s) for i, s in enumerate([5, 50, 7, 7, 1])]
    for count in (5, 6, 9):
        shares = [shard_inputs(items, i, count) for i in range(count)]
        assert sorted(x.path for s in shares for x in s) == sorted(x.path for x in items)
        assert all(len(s) <= 1 for s in shares) and shares[0][0].size == 50


# ------------------------------------------------------------------------------ ranks and array tasks


@pytest.mark.slow
def test_torchrun_survives_a_bad_video_and_merges_the_failures(checkpoint, tmp_path):
    pytest.importorskip("torch.distributed.run")
    d = tmp_path / "v"
    d.mkdir()
    for name in ("a", "b", "c"):
        make_video(d / f"{name}.mp4", n=10)
    (d / "bad.mp4").write_bytes(b"not a video\n" * 50)
    out = tmp_path / "out"
    e = dict(os.environ, PYTHONPATH=SRC, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "-m", "milnce.cli", "extract", str(d), "--out", str(out), *ckpt_args(checkpoint, "--workers", "0")],
                       env=e, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stderr[-3000:]  # the documented status, from every rank
    assert "SIGTERM" not in r.stderr and "Signals.SIG" not in r.stderr
    assert sorted(p.name for p in out.glob("*.npz")) == ["a.npz", "b.npz", "c.npz"]  # no rank was cut short
    merged = (out / "failures.csv").read_text().splitlines()
    assert len(merged) == 2 and merged[1].startswith(str(d / "bad.mp4"))
    c = check(out, [d])
    assert c.done == 3 and [p for p, _ in c.failed] == [str(d / "bad.mp4")]


def test_failure_lists_of_an_earlier_run_with_another_share_count_are_ignored(tmp_path, caplog):
    from milnce.extract import read_failures
    from milnce.extract.runner import write_failures

    for i in range(4):
        write_failures(str(tmp_path / f"failures-rank{i}.csv"), [(f"/v/old{i}.mp4", "bad")], shards=4)
        os.utime(tmp_path / f"failures-rank{i}.csv", (1, 1))
    for i in range(2):
        write_failures(str(tmp_path / f"failures-rank{i}.csv"), [(f"/v/new{i}.mp4", "bad")], shards=2)
    with caplog.at_level(logging.WARNING, logger="milnce.extract"):
        rows = read_failures(str(tmp_path))
    assert sorted(p for p, _ in rows) == ["/v/new0.mp4", "/v/new1.mp4"]
    assert "failures-rank2.csv" in caplog.text and "4 shares" in caplog.text


def test_extract_and_check_summaries():
    s = ExtractReport("out", "0/1", inputs=1, share=1, extracted=1, windows=1).summary()
    assert "of 1 video (1 in the list); 1 window," in s
    s = ExtractReport("out", "0/1", inputs=2, share=2, extracted=2, windows=5).summary()
    assert "of 2 videos" in s and "5 windows" in s
    assert "1 of 1 video done" in CheckReport("out", inputs=1, done=1).summary()
    assert "0 of 2 videos done" in CheckReport("out", inputs=2).summary()
