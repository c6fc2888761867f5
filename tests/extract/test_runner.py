"""The one embedding path and the one walker, attacked: link loops, links out of the roots,
non-UTF-8 names, damaged feature files, huge shard counts, a plugged-in window source."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from milnce.cli import main
from milnce.extract import check, collect_inputs, extract, read_feature_file, shard_inputs
from milnce.extract.store import StoreError
from milnce.video import VideoEmbeddings, VideoJob, VideoWindows, run_jobs
from milnce.video.find import walk_videos
from milnce.video.result import EmbeddingsFileError, check_crc, check_structure
from milnce.windows import WindowSettings
from video_fixtures import make_video

S = WindowSettings(fps=10, num_frames=8, size=32, stride=4)
SRC = str(Path(__file__).resolve().parents[2] / "src")


def _ckpt(checkpoint):
    w, v = checkpoint
    return ["--weights", str(w), "--vocab", str(v), "--no-download", "--num-frames", "8", "--size", "32",
            "--stride", "4", "--quiet", "--workers", "0"]


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


# ------------------------------------------------------------------------------ the result type


def test_one_result_type_keeps_the_old_names_and_reads_old_files(tmp_path):
    w = VideoWindows("v.mp4", np.array([0.0, 0.4]), np.array([0.8, 1.2]), np.ones((2, 7), np.float32),
                     np.zeros((2, 3), np.float32), 1.5, settings=S)
    assert w.video_embedding is w.embeddings and w.mixed_5c is w.features and w.start is w.starts
    assert w.end is w.ends and w.video_path == "v.mp4" and VideoEmbeddings is VideoWindows
    w.save(tmp_path / "new.npz")
    back = VideoWindows.load(tmp_path / "new.npz")
    assert back.embeddings.shape == (2, 7) and back.settings == S and back.duration == 1.5
    assert read_feature_file(tmp_path / "new.npz").video_embedding.shape == (2, 7)
    # the embed-video format of before
    np.savez(tmp_path / "old.npz", embeddings=np.ones((3, 5), np.float32), starts=np.arange(3.0), ends=np.arange(3.0) + 1,
             fps=np.float64(10), num_frames=np.int64(8), size=np.int64(32), stride=np.int64(4))
    old = VideoWindows.load(tmp_path / "old.npz")
    assert old.embeddings.shape == (3, 5) and old.settings == S


def _flip_inside_member(path: Path, member: str = "video_embedding.npy") -> None:
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(member)
    data = bytearray(path.read_bytes())
    at = info.header_offset + 30 + len(info.filename) + len(info.extra) + info.file_size - 3  # in the data
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["flip", "truncate", "object", "zero", "strings"])
def test_similarity_on_damaged_or_odd_files_is_one_line(tmp_path, damage, wargs, capsys):
    f = tmp_path / "e.npz"
    VideoWindows("v.mp4", np.array([0.0, 0.4]), np.array([0.8, 1.2]), np.ones((2, 512), np.float32)).save(f)
    if damage == "flip":
        _flip_inside_member(f)
    elif damage == "truncate":
        f.write_bytes(f.read_bytes()[:300])
    elif damage == "object":
        np.save(tmp_path / "e.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
        f = tmp_path / "e.npy"
    elif damage == "zero":
        VideoWindows("v.mp4", np.zeros(0), np.zeros(0), np.zeros((0, 512), np.float32)).save(f)
    else:
        np.savez(f, video_embedding=np.array([["a", "b"]]), start=np.zeros(1), end=np.zeros(1))
    rc = main(["similarity", "--text", "a person cooking", "--video-embeddings", str(f), *wargs, "--no-download"])
    err = capsys.readouterr().err
    assert rc != 0 and err.startswith("milnce: error:") and len(err.strip().splitlines()) == 1, err
    assert "e.np" in err


def test_structure_check_and_crc_check(tmp_path):
    f = tmp_path / "x.npz"
    n = 4000  # members larger than what reading an array header pulls in
    VideoWindows("v.mp4", np.arange(n, dtype=float), np.arange(n, dtype=float), np.ones((n, 4), np.float32)).save(f)
    assert check_structure(str(f)) is None and check_crc(str(f)) is None
    _flip_inside_member(f)
    assert check_structure(str(f)) is None  # a flipped data byte keeps the structure...
    assert "CRC" in check_crc(str(f))  # ...only the CRC sees it
    with pytest.raises(EmbeddingsFileError, match="x.npz"):
        VideoWindows.load(f)
    with pytest.raises(StoreError, match="x.npz"):
        read_feature_file(f)
    g = tmp_path / "y.npz"
    g.write_bytes((tmp_path / "x.npz").read_bytes()[:-40])
    assert check_structure(str(g)) is not None


# ------------------------------------------------------------------------------ extraction


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "v"
    d.mkdir()
    make_video(d / "a.mp4", n=10)
    return d


def test_verify_redoes_a_flipped_byte_and_every_rerun_redoes_a_truncated_file(model, folder, tmp_path, caplog):
    out = tmp_path / "out"
    rep = extract([folder], out, model, S, workers=0)
    assert rep.extracted == 1
    _flip_inside_member(out / "a.npz")
    c = check(out, [folder], verify=True)
    assert c.done == 0 and c.stale and "a.mp4" in c.stale[0][0]
    with caplog.at_level(logging.WARNING, logger="milnce.extract"):
        rep = extract([folder], out, model, S, workers=0, verify=True)
    assert rep.redone == 1 and check_crc(str(out / "a.npz")) is None
    data = (out / "a.npz").read_bytes()
    (out / "a.npz").write_bytes(data[: len(data) - 100])  # truncated: seen without --verify
    assert extract([folder], out, model, S, workers=0).redone == 1


def test_unreadable_video_with_a_non_utf8_name(model, tmp_path, capsys, checkpoint):
    d = tmp_path / "v"
    d.mkdir()
    make_video(d / "a.mp4", n=10)
    bad = os.path.join(os.fsencode(d), b"bad\xff.mp4")
    with open(bad, "wb") as f:
        f.write(b"not a video\n" * 10)
    out = tmp_path / "out"
    rc = main(["extract", str(d), "--out", str(out), *_ckpt(checkpoint)])
    err = capsys.readouterr().err
    assert rc == 1 and "bad\\xff.mp4" in err and "Traceback" not in err
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")]
    raw = (out / "failures.csv").read_bytes()
    assert b"bad\xff.mp4" in raw
    path, reason = raw.decode("utf-8", "surrogateescape").splitlines()[1].split(",", 1)
    assert "bad" not in reason  # the path is in its own column only
    assert main(["extract", str(d), "--out", str(out), *_ckpt(checkpoint)]) == 1  # the rerun too


def test_truncated_video_is_said_in_extract_and_encode_video_file(model, tmp_path, capsys, checkpoint, caplog):
    good = make_video(tmp_path / "full.mkv", n=40, rate=10, codec="mpeg4", options={"qscale": "2"})
    d = tmp_path / "v"
    d.mkdir()
    data = good.read_bytes()
    (d / "cut.mkv").write_bytes(data[: len(data) // 2])
    assert main(["extract", str(d), "--out", str(tmp_path / "out"), *_ckpt(checkpoint)]) == 0
    err = capsys.readouterr().err
    assert "milnce: " in err and "cut.mkv" in err and "truncated" in err
    with caplog.at_level(logging.WARNING, logger="milnce.video"):
        model.encode_video_file(d / "cut.mkv", num_frames=8, size=32)
    assert "truncated" in caplog.text


def test_huge_batch_size_is_one_line(tmp_path, folder, capsys, checkpoint):
    args = _ckpt(checkpoint)
    rc = main(["extract", str(folder), "--out", str(tmp_path / "o"), *args, "--batch-size", "100000000"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("milnce: error:") and len(err.strip().splitlines()) == 1


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


def test_shards_beyond_the_videos_match_the_balanced_split():
    from milnce.extract.inputs import VideoInput

    items = [VideoInput(f"/v/{i}.mp4", f"{i}.npz", s) for i, s in enumerate([5, 50, 7, 7, 1])]
    for count in (5, 6, 9):
        shares = [shard_inputs(items, i, count) for i in range(count)]
        assert sorted(x.path for s in shares for x in s) == sorted(x.path for x in items)
        assert all(len(s) <= 1 for s in shares) and shares[0][0].size == 50


# ------------------------------------------------------------------------------ the decoder hook


def gray_source(task, settings, pad, threads, warn):
    """A plugged-in window source: three channels-last windows of gray frames (like FFmpeg's rawvideo)."""

    class Src:
        duration = 1.2

        def __iter__(self):
            T, s = settings.num_frames, settings.size
            for k in range(3):
                yield k, k * 0.4, k * 0.4 + 0.8, np.full((T, s, s, 3), 100 + k, np.uint8)

    return Src()


def test_a_plugged_in_window_source_feeds_the_scheduler(model, folder):
    before = torch.backends.cudnn.benchmark
    (res,) = run_jobs(model, [VideoJob(str(folder / "a.mp4"), key="x")], S, workers=0, source=gray_source)
    assert res.key == "x" and len(res) == 3 and res.duration == 1.2 and res.starts.tolist() == [0.0, 0.4, 0.8]
    x = torch.stack([torch.full((3, 8, 32, 32), 100.0 + k) for k in range(3)]) / 255
    want = model.encode_video(x).numpy()
    np.testing.assert_allclose(res.embeddings, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))
    assert torch.backends.cudnn.benchmark == before  # the process-wide flag is left alone


def test_empty_results_take_their_sizes_from_the_model(model, tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"nope" * 100)
    (res,) = run_jobs(model, [str(bad)], S, workers=0, features=True)
    assert res.error and res.embeddings.shape == (0, model.info.embed_dim) and res.features.shape == (0, 1024)


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
                        "-m", "milnce.cli", "extract", str(d), "--out", str(out), *_ckpt(checkpoint)],
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


def test_localize_on_a_truncated_video_says_it_in_a_milnce_line(tmp_path, wargs, capsys, recwarn):
    good = make_video(tmp_path / "full.mkv", n=40, rate=10, codec="mpeg4", options={"qscale": "2"})
    data = good.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: len(data) // 2])
    rc = main(["localize", str(cut), "a person cooking", "--num-frames", "8", "--size", "32", "--stride", "4",
               *wargs, "--no-download"])
    err = capsys.readouterr().err
    assert rc == 0 and "milnce: " in err and "truncated" in err
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]
