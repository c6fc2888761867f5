"""``milnce index``, ``milnce search``, ``milnce remove``, ``milnce localize`` end to end
(``milnce.commands.search``): the CLI run through ``main(argv)`` or a subprocess."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import os
import re
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import milnce
import milnce.atomic
from conftest import VOCAB, random_state_dict, write_checkpoint
from eval_fixtures import erofs_open
from index_fixtures import (
    ROOT,
    SCORE_QUERIES,
    SMALL,
    SMALL_ARGS,
    WINDOW_32,
    copy_videos,
    fake_emb,
    fake_model,
    feature_file,
    make_index,
    synthetic_index,
    windows,
)
from milnce import cli
from milnce.cli import main
from milnce.index import (
    Index,
    IndexDamagedError,
    IndexFolderError,
    IndexLockedError,
    IndexMismatchError,
    IndexNotFoundError,
    build_index,
    find_videos,
)
from milnce.index.filters import VideoFilter
from milnce.index.source import IndexModelError, recorded_weights
from milnce.runoptions import RunOptions
from milnce.windows import WindowSettings
from video_fixtures import make_scene_video, make_video, write_feature_stub, write_features

SERVE_INSTALLED = importlib.util.find_spec("fastapi") is not None and importlib.util.find_spec("httpx") is not None
needs_serve = pytest.mark.skipif(not SERVE_INSTALLED, reason="the serve extra (fastapi, httpx) is not installed")
if SERVE_INSTALLED:
    from fastapi.testclient import TestClient

    from milnce.server import DEFAULT_K, create_app


def test_remove_says_1_video_left(tmp_path, capsys):
    ix = tmp_path / "ix"
    idx = Index.create(ix, SimpleNamespace(weights_id="synthetic", info=None))
    for name in ("a.mp4", "b.mp4"):
        idx.add_video(str(tmp_path / name), SimpleNamespace(embeddings=np.ones((1, 512), np.float32),
                                                            starts=np.array([0.0]), ends=np.array([2.0]), duration=2.0),
                      size=1, mtime=1.0, content_hash=name)
    idx.close()
    assert cli.main(["remove", "--index", str(ix), str(tmp_path / "a.mp4")]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"{ix}: 1 video left"


def test_index_from_features_lists_crafted_files_as_failed(tmp_path, capsys):
    feats, vids = tmp_path / "features", tmp_path / "videos"
    vids.mkdir()
    write_feature_stub(feats / "ok.npz", vids / "ok.mp4")
    write_feature_stub(feats / "neg.npz", vids / "neg.mp4", meta_duration=-5.0)
    write_feature_stub(feats / "huge.npz", vids / "huge.mp4", duration=1e308)  # the array member, not the meta
    write_feature_stub(feats / "size.npz", vids / "size.mp4", size=-1)
    write_feature_stub(feats / "nul.npz", vids / "nul.mp4", src_path=str(vids / "a\0b.mp4"))
    rc = main(["index", "--from-features", str(feats), "--index", str(tmp_path / "ix"), "--root", str(vids),
               "--json"])
    out, err = capsys.readouterr()
    rep = json.loads(out)
    assert rc == 1 and [Path(p).name for p in rep["added"]] == ["ok.mp4"]
    failed = {Path(p).name: why for p, why in rep["failed"]}
    assert len(failed) == 4 and "Traceback" not in err and "\0" not in err
    assert "duration" in failed["huge.mp4"] and "video-h" not in err.split("\n")[-1]
    assert os.path.isdir(tmp_path / "ix")


@pytest.mark.parametrize("argv, words", [
    (["--after", "99999999999999"], "out of range"),
    (["--not", "dog", "--not-weight", "1e39"], "from 0 to"),
])


def test_cli_one_line(tmp_path, capsys, argv, words):
    assert main(["search", "--index", str(tmp_path / "ix"), "cut tomato", *argv]) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1 and "Traceback" not in err


def _one_error_line(err: str) -> None:
    assert "Traceback" not in err
    lines = [x for x in err.splitlines() if x.startswith("milnce: error:")]
    assert len(lines) == 1, err


# ----- gap 1: six (and more) malformed --from-features inputs ---------------------------------


_EMB = np.random.default_rng(1).standard_normal((4, 512)).astype(np.float32)
MALFORMED = {
    "wrong dimension": ({"video_embedding": _EMB[:, :256]}, {}),
    "end length": ({"end": np.arange(3.0)}, {}),
    "string arrays": ({"video_embedding": _EMB.astype(str)}, {}),
    "string times": ({"start": np.array(["0", "1", "2", "3"])}, {}),
    "source a string": ({}, {"source": "/etc/passwd"}),
    "source size a string": ({}, {"source": {"path": "X", "size": "big", "mtime_ns": 1}}),
    "settings a string": ({}, {"settings": "fast"}),
    "settings a list": ({}, {"settings": [10, 8]}),
    "weights an object": ({}, {"weights": {"a": 1}}),
    "missing start": ({"start": None}, {}),
    "path member not a string": ({"path": np.arange(3)}, {}),
    "warnings not a list": ({}, {"warnings": 5}),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_feature_files_fail_in_one_line_naming_the_file(tmp_path, capsys, case):
    arrays, meta = MALFORMED[case]
    vids = tmp_path / "videos"
    vids.mkdir()
    for n in ("a.mp4", "b.mp4"):
        (vids / n).write_bytes(n.encode() * 10)
    if "source" in meta and isinstance(meta["source"], dict):
        meta = {"source": {**meta["source"], "path": str(vids / "a.mp4")}}
    alone, mixed = tmp_path / "alone", tmp_path / "mixed"
    write_features(alone, "bad.npz", vids / "a.mp4", arrays=arrays, **meta)
    write_features(mixed, "bad.npz", vids / "a.mp4", arrays=arrays, **meta)
    write_features(mixed, "good.npz", vids / "b.mp4")
    # alone: a one-line error naming the file
    rc = main(["index", "--from-features", str(alone), "--index", str(tmp_path / "ix1"), "--root", str(vids),
               "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2
    _one_error_line(err)
    assert "bad.npz" in err
    # beside a good file: the same one line, or the bad file listed as failed (exit 1)
    rc = main(["index", "--from-features", str(mixed), "--index", str(tmp_path / "ix2"), "--root", str(vids),
               "--quiet", "--json"])
    cap = capsys.readouterr()
    assert rc in (1, 2) and "Traceback" not in cap.err
    if rc == 2:
        _one_error_line(cap.err)
        assert "bad.npz" in cap.err
    else:
        rep = json.loads(cap.out)
        assert [Path(p).name for p in rep["added"]] == ["b.mp4"]
        assert any("bad.npz" in p or "bad.npz" in why for p, why in rep["failed"])


def test_flipped_byte_in_a_feature_file_is_one_line_for_from_features(tmp_path, capsys):
    """Issue 15 item 6: the cheap check passes a flipped byte inside a member; the reader names the file."""
    import zipfile

    vids = tmp_path / "videos"
    vids.mkdir()
    (vids / "a.mp4").write_bytes(b"a" * 10)
    f = write_features(tmp_path / "f", "a.npz", vids / "a.mp4")
    data = bytearray(f.read_bytes())
    with zipfile.ZipFile(f) as z:
        info = z.getinfo("video_embedding.npy")
    data[info.header_offset + 30 + len(info.filename) + len(info.extra) + info.file_size // 2] ^= 0x10
    f.write_bytes(bytes(data))
    rc = main(["index", "--from-features", str(tmp_path / "f"), "--index", str(tmp_path / "ix"), "--root", str(vids),
               "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2
    _one_error_line(err)
    assert "a.npz" in err


@pytest.mark.usefixtures("reuse_model")
def test_read_only_localize_plot_and_missing_matplotlib(tmp_path, wargs, monkeypatch, capsys):

    video = make_video(tmp_path / "v.mp4", n=12, rate=10, width=48, height=32)
    args = ["localize", str(video), "red square", "--fps", "10", "--num-frames", "8", "--size", "32",
            "--stride", "4", "--quiet", *wargs]
    ro = tmp_path / "ro"
    ro.mkdir()
    erofs_open(monkeypatch, ro)
    pytest.importorskip("matplotlib")
    assert main([*args, "--plot", str(ro / "curve.png")]) == 2
    err = capsys.readouterr().err
    _one_error_line(err)
    assert "curve.png" in err and "Read-only file system" in err and not list(ro.iterdir())
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)  # not installed
    assert main([*args, "--plot", str(tmp_path / "c.png")]) == 2
    err = capsys.readouterr().err
    _one_error_line(err)
    assert "needs matplotlib" in err


# ----- issue 15 item 2: collection roots ------------------------------------------------------


@pytest.fixture(scope="module")
def client_for(model):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")

    def make(index: Index) -> TestClient:
        return TestClient(create_app(index, model, refresh_interval=0), raise_server_exceptions=False)

    return make


@needs_serve
def test_crafted_feature_file_cannot_serve_etc_passwd(tmp_path, client_for, capsys):
    vids = tmp_path / "videos"
    vids.mkdir()
    (vids / "ok.mp4").write_bytes(b"video" * 20)
    feats = tmp_path / "features"
    feature_file(feats / "ok.npz", vids / "ok.mp4")
    feature_file(feats / "evil.npz", Path("/etc/passwd"))  # its real size and mtime
    # --root is required (before anything is created)
    assert main(["index", "--from-features", str(feats), "--index", str(tmp_path / "ix0"), "--quiet"]) == 2
    assert "--root" in capsys.readouterr().err and not (tmp_path / "ix0").exists()
    # the crafted source is outside the root: not indexed, named in the report
    assert main(["index", "--from-features", str(feats), "--index", str(tmp_path / "ix"), "--root", str(vids),
                 "--quiet", "--json"]) == 1
    rep = json.loads(capsys.readouterr().out)
    assert [Path(p).name for p in rep["added"]] == ["ok.mp4"] and rep["failed"][0][0] == "/etc/passwd"
    # and a record that got in anyway (written through the library) is still not served
    with Index.open(tmp_path / "ix", readonly=False) as w:
        st = os.stat("/etc/passwd")
        w.add_video("/etc/passwd", windows(), size=st.st_size, mtime=st.st_mtime, content_hash="")
    with Index.open(tmp_path / "ix") as idx, client_for(idx) as c:
        ids = {Path(v.path).name: v.id for v in idx.videos()}
        r = c.get(f"/api/videos/{ids['passwd']}/file")
        assert r.status_code == 403 and b"root:" not in r.content and r.json()["error"]["status"] == 403
        assert c.get(f"/api/videos/{ids['ok.mp4']}/file").content == b"video" * 20


@needs_serve
def test_old_index_without_roots(tmp_path, client_for, capsys):
    import sqlite3

    vids = tmp_path / "videos"
    (vids / "a").mkdir(parents=True)
    (vids / "a" / "x.mp4").write_bytes(b"X" * 10)
    (vids / "y.mp4").write_bytes(b"Y" * 10)
    make_index(tmp_path / "ix", [vids / "a" / "x.mp4", vids / "y.mp4"]).close()
    con = sqlite3.connect(tmp_path / "ix" / "index.sqlite")
    con.execute("DELETE FROM meta WHERE key='roots'")  # as written before roots were recorded
    con.commit()
    con.close()
    with Index.open(tmp_path / "ix") as idx, client_for(idx) as c:  # the common parent folder
        assert idx.roots == []
        assert all(c.get(f"/api/videos/{v.id}/file").status_code == 200 for v in idx.videos())
    with Index.open(tmp_path / "ix", readonly=False) as w:
        st = os.stat("/etc/passwd")
        w.add_video("/etc/passwd", windows(), size=st.st_size, mtime=st.st_mtime, content_hash="")
    with Index.open(tmp_path / "ix") as idx, client_for(idx) as c:  # common parent "/": nothing is served
        for v in idx.videos():
            r = c.get(f"/api/videos/{v.id}/file")
            assert r.status_code == 403 and "milnce index --index DIR --root" in r.json()["error"]["message"]
    assert main(["index", "--index", str(tmp_path / "ix"), "--root", str(vids)]) == 0
    capsys.readouterr()
    with Index.open(tmp_path / "ix") as idx, client_for(idx) as c:
        ok = {Path(v.path).name: c.get(f"/api/videos/{v.id}/file").status_code for v in idx.videos()}
        assert ok == {"x.mp4": 200, "y.mp4": 200, "passwd": 403}


def test_queries_file_rules_and_csv_failures(tiny_index, tmp_path, model, monkeypatch, capsys):
    monkeypatch.setattr("milnce.commands.search.model_from_args", lambda args: model)
    monkeypatch.setattr("milnce.index.IndexReader.check_model", lambda self, m: None)
    qf = tmp_path / "q.txt"
    qf.write_text("# a comment, not a query\ncut\n\nqqqzzz\n")
    assert main(["search", "--index", str(tiny_index), "--queries-file", str(qf), "--csv"]) == 1
    out, err = capsys.readouterr()
    assert {line.split(",")[0] for line in out.splitlines()[1:]} == {"cut"}  # no row for the comment
    assert "qqqzzz" in err and "failed" in err  # the failed query is named on stderr
    assert main(["search", "--index", str(tiny_index), "--queries-file", str(qf), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out, parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert [r["query"] for r in doc["results"]] == ["cut", "qqqzzz"]
    for bad in ("/dev/zero", str(tmp_path)):
        assert main(["search", "--index", str(tiny_index), "--queries-file", bad]) == 2
        assert "not a text file" in capsys.readouterr().err
    long = tmp_path / "long.txt"
    long.write_bytes(b"a" * 200_000)
    assert main(["search", "--index", str(tiny_index), "--queries-file", str(long)]) == 2
    assert "longer than" in capsys.readouterr().err
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"cut\n\x00\x00\n")
    assert main(["search", "--index", str(tiny_index), "--queries-file", str(binary)]) == 2

QUERIES = ["red square moving", "a blue ball", "green door"]


@pytest.fixture(scope="module")
def built(tmp_path_factory, video_dir, wargs) -> Path:
    """An index of ``video_dir`` built by the CLI (shared, read-only)."""
    d = tmp_path_factory.mktemp("index") / "ix"
    assert main(["index", str(video_dir), "--index", str(d), "--quiet", *SMALL_ARGS, *wargs]) == 1  # broken.mp4
    return d


@pytest.fixture(scope="module")
def direct(model, video_dir):
    """Per-video embeddings computed directly with ``encode_video_file``."""
    out = {}
    for p in sorted(video_dir.rglob("*.mp4")):
        if p.name != "broken.mp4":
            out[str(p)] = model.encode_video_file(p, **SMALL)
    return out


# --------------------------------------------------------------------------------------------
# End to end through the CLI
@pytest.mark.usefixtures("reuse_model")


def test_index_cli_builds_and_logs_errors(built, video_dir):
    with Index.open(built) as idx:
        vids = idx.videos()
        assert sorted(Path(v.path).name for v in vids) == ["blue.mp4", "green.mp4", "red.mp4"]
        assert all(v.exists and v.num_windows > 0 and v.duration > 2 for v in vids)
        assert len(idx) == sum(v.num_windows for v in vids)
        assert idx.settings == {**SMALL, "crop": "center"}
        errs = idx.errors()
        assert [Path(p).name for p, _ in errs] == ["broken.mp4"]
        assert "not a readable video" in errs[0][1] or errs[0][1]
    log = (built / "errors.log").read_text()
    assert "broken.mp4" in log


@pytest.mark.usefixtures("reuse_model")
def test_search_scores_equal_direct_computation(built, wargs, model, direct, capsys):
    k = 6
    assert main(["search", "--index", str(built), *QUERIES, "-k", str(k), "--no-merge", "--json", *wargs]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["mode"] == "exact" and len(out["results"]) == len(QUERIES)
    text = model.encode_text(QUERIES).numpy()
    paths = list(direct)
    all_scores = np.concatenate([text @ direct[p].embeddings.T for p in paths], axis=1)
    starts = np.concatenate([direct[p].starts for p in paths])
    ends = np.concatenate([direct[p].ends for p in paths])
    owner = np.concatenate([[p] * len(direct[p]) for p in paths])
    for qi, res in enumerate(out["results"]):
        assert res["error"] is None
        got = res["moments"]
        assert len(got) == k
        order = np.argsort(-all_scores[qi], kind="stable")[:k]
        np.testing.assert_allclose([m["score"] for m in got], all_scores[qi][order], rtol=1e-4, atol=1e-5)
        for m, _j in zip(got, order):
            # ties may swap equal-score windows; compare the window when scores differ clearly
            assert m["path"] in direct
            row = np.flatnonzero((owner == m["path"]) & np.isclose(starts, m["start"]))
            assert len(row) == 1 and abs(all_scores[qi][row[0]] - m["score"]) < 1e-4 * max(1.0, abs(m["score"]))
            assert m["end"] == pytest.approx(ends[row[0]])
            assert m["exists"] is True


@pytest.mark.usefixtures("reuse_model")
def test_search_table_output_and_bad_queries(built, wargs, capsys):
    rc = main(["search", "--index", str(built), "red square", "", "xyzzy plugh", "-k", "3", *wargs])
    assert rc == 1  # finished, but some inputs (queries) failed
    out = capsys.readouterr().out
    assert "'red square':" in out and any(n in out for n in ("red.mp4", "green.mp4", "blue.mp4"))
    assert "the query is empty" in out
    assert "no word of 'xyzzy plugh' is in the model's vocabulary" in out
    # only unusable queries: exit code 1, no noise
    assert main(["search", "--index", str(built), "qwerty", *wargs]) == 1
    assert "no results" in capsys.readouterr().out


@pytest.mark.usefixtures("reuse_model")
def test_search_api_merge_by_video_and_clamping(built, model):
    with Index.open(built, model) as idx:
        n = len(idx)
        moments = idx.search("red square", k=3)
        assert 1 <= len(moments) <= 3
        assert [m.score for m in moments] == sorted((m.score for m in moments), reverse=True)
        for m in moments:
            starts, ends, _ = idx.windows(m.video_id)
            assert m.start in starts and m.end in ends and m.end > m.start
        single = idx.search("red square", k=10**9, merge=False)
        assert len(single) == n  # clamped
        best = idx.search("red square", k=1, merge=False)[0]
        assert best.score == pytest.approx(single[0].score)
        # moments partition each video's windows: no two share a window (windows overlap in time,
        # so neighbouring moments may overlap by less than one window)
        merged = idx.search("red square", k=n)
        for a in merged:
            for b in merged:
                if a is not b and a.video_id == b.video_id:
                    assert a.start != b.start and a.end != b.end
                    assert a.end <= b.start or b.end <= a.start or (a.start < b.start) == (a.end < b.end)
        vids = idx.search("red square", k=100, by_video=True)
        assert len(vids) == 3 and len({m.video_id for m in vids}) == 3
        assert vids[0].score == pytest.approx(best.score)
        many = idx.search(["red square", "a blue ball"], k=2)
        assert len(many) == 2 and all(len(r) <= 2 for r in many)
        with pytest.warns(UserWarning, match="vocabulary"):
            assert idx.search("zzzz", k=3) == []
        with pytest.warns(UserWarning, match="empty"):
            assert idx.search(["", "red"], k=2)[0] == []
        emb = model.encode_text(["red square"]).numpy()
        via_emb = idx.search_embeddings(emb, k=3)[0]
        assert [(m.video_id, m.start) for m in via_emb] == [(m.video_id, m.start) for m in moments]
        with pytest.raises(ValueError):
            idx.search("red", k=0)
        with pytest.raises(ValueError):
            idx.search_embeddings(np.zeros((1, 7), np.float32))
        with pytest.raises(KeyError):
            idx.video(10**6)
        assert idx.video(vids[0].video_id).path == vids[0].path
    with Index.open(built) as idx:  # no model: embeddings only
        with pytest.raises(ValueError, match="without a model"):
            idx.search("red")


@pytest.mark.usefixtures("reuse_model")
def test_unknown_index_folder(tmp_path, wargs, capsys):
    assert main(["search", "--index", str(tmp_path / "nope"), "red", *wargs]) == 2
    assert "no index at" in capsys.readouterr().err
    with pytest.raises(IndexNotFoundError):
        Index.open(tmp_path)


@pytest.mark.usefixtures("reuse_model")
def test_weights_mismatch_refused(built, tmp_path, checkpoint, capsys):
    import torch

    with pytest.raises(IndexMismatchError, match="other weights"):
        Index.open(built, fake_model("0123456789abcdef"))
    sd = torch.load(checkpoint[0])
    sd["fc.bias"] = sd["fc.bias"] + 1
    other = tmp_path / "other.pth"
    torch.save(sd, other)
    rc = main(["search", "--index", str(built), "red", "--weights", str(other), "--vocab", str(checkpoint[1])])
    assert rc == 2
    assert "built with other weights" in capsys.readouterr().err


@pytest.mark.usefixtures("reuse_model")
def test_index_cli_bad_paths(tmp_path, wargs, capsys):
    assert main(["index", str(tmp_path / "missing"), "--index", str(tmp_path / "ix"), *wargs]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["index", str(tmp_path / "empty"), "--index", str(tmp_path / "ix"), *wargs]) == 2
    assert "no video files found" in capsys.readouterr().err
    assert not (tmp_path / "ix").exists()


# --------------------------------------------------------------------------------------------
# Robustness
@pytest.mark.usefixtures("reuse_model")


def test_lock_refuses_second_writer(tmp_path, video_dir, wargs, model, capsys):
    ix = tmp_path / "ix"
    holder = Index.create(ix, model, WindowSettings.for_model(model, **SMALL))
    try:
        with pytest.raises(IndexLockedError, match="another 'milnce index'"):
            Index.create(ix, model, WindowSettings.for_model(model, **SMALL))
        rc = main(["index", str(video_dir / "red.mp4"), "--index", str(ix), "--quiet", *SMALL_ARGS, *wargs])
        assert rc == 2
        assert f"pid {os.getpid()}" in capsys.readouterr().err
        with Index.open(ix) as reader:  # reading while locked is fine
            assert len(reader) == 0
    finally:
        holder.close()
    Index.create(ix, model).close()  # released


@pytest.mark.usefixtures("reuse_model")
@pytest.mark.slow
def test_kill_9_mid_run_then_resume(tmp_path, video_dir, wargs, model, direct, capsys):
    vids = copy_videos(video_dir, tmp_path / "v")
    make_scene_video(vids / "zz_extra.mp4", 2.0, (90, 90, 90), 7)
    ix = tmp_path / "ix"
    # a slow run to kill: each commit of a video is followed by a pause (patched through the
    # public Index.add_video in the child process)
    slow = ("import sys, time\nimport milnce.index as mi\nfrom milnce.cli import main\n"
            "add = mi.Index.add_video\n"
            "def slow_add(self, *a, **k):\n    out = add(self, *a, **k)\n    time.sleep(30)\n    return out\n"
            "mi.Index.add_video = slow_add\nsys.exit(main(sys.argv[1:]))\n")
    cmd = [sys.executable, "-c", slow, "index", str(vids), "--index", str(ix), "--quiet", *SMALL_ARGS, *wargs]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        committed = 0
        while time.time() < deadline and proc.poll() is None:
            db = ix / "index.sqlite"
            if db.exists():
                try:
                    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
                    committed = con.execute("SELECT count(*) FROM videos").fetchone()[0]
                    con.close()
                except sqlite3.Error:
                    committed = 0
                if committed >= 1:
                    break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        assert committed == 1
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    # Simulate the worst moment too: a partial append after the last commit.
    with open(next(ix.glob("vectors-*.f32")), "ab") as f:
        f.write(os.urandom(3000))
    with Index.open(ix, model) as idx:
        assert len(idx.videos()) == 1
        first = idx.videos()[0].path
        assert idx.search("red square", k=2)
    assert main(["index", str(vids), "--index", str(ix), "--quiet", "--json", *wargs]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["unchanged"] == 1 and len(rep["added"]) == 3 and first not in rep["added"]
    # The resumed index equals a clean run: every video's windows as encode_video_file gives them.
    with Index.open(ix) as a:
        assert len(a.videos()) == 4 and len(a) == a.num_rows
        for v in a.videos():
            starts, ends, emb = a.windows(v.id)
            ref = direct.get(str(video_dir / Path(v.path).name)) or direct.get(str(video_dir / "sub" / Path(v.path).name))
            if ref is None:
                ref = model.encode_video_file(v.path, **SMALL)
            # float tolerance relative to the embedding's scale (the calibrated test model gives
            # values up to ~100): the pipeline batches windows of several videos together, and the
            # CPU kernels' rounding depends on the batch (encode_video_file itself differs by
            # ~1e-4 of the scale between batch sizes 2 and 4)
            np.testing.assert_allclose(emb, ref.embeddings, rtol=1e-4, atol=1e-4 * np.abs(ref.embeddings).max())
            np.testing.assert_allclose(starts, ref.starts)
            np.testing.assert_allclose(ends, ref.ends)


@pytest.mark.usefixtures("reuse_model")
def test_index_cli_ann_small(tmp_path, video_dir, wargs, capsys):
    pytest.importorskip("faiss")
    ix = tmp_path / "ix"
    assert main(["index", str(video_dir / "sub"), "--index", str(ix), "--ann", "--ann-min-windows", "0", "--quiet",
                 "--json", *SMALL_ARGS, *wargs]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["ann"]["recall_at_10"] == pytest.approx(1.0)
    assert main(["search", "--index", str(ix), "blue ball", "-k", "2", "--json", *wargs]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["results"][0]["moments"]


# --------------------------------------------------------------------------------------------
# localize and demo
@pytest.mark.usefixtures("reuse_model")


def test_localize_cli_plot_and_scores(tmp_path, video_dir, wargs, model, direct, built, capsys):
    import torch

    video = video_dir / "green.mp4"
    png = tmp_path / "curve.png"
    assert main(["localize", str(video), "green door", "-k", "2", "--plot", str(png), "--json",
                 *SMALL_ARGS, *wargs]) == 0
    out = json.loads(capsys.readouterr().out)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ve = direct[str(video)]
    expected = (model.encode_text(["green door"]) @ torch.from_numpy(ve.embeddings).T)[0].numpy()
    np.testing.assert_allclose([w["score"] for w in out["windows"]], expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose([w["start"] for w in out["windows"]], ve.starts)
    assert len(out["moments"]) <= 2 and out["moments"][0]["score"] == pytest.approx(expected.max(), rel=1e-4)
    # from the index's stored windows (same settings), human-readable
    assert main(["localize", str(video), "green door", "--index", str(built), *wargs]) == 0
    text = capsys.readouterr().out
    assert "green door" in text and f"{len(expected)} windows" in text
    assert main(["localize", str(video), "xyzzy", *SMALL_ARGS, *wargs]) == 2
    assert "vocabulary" in capsys.readouterr().err
ARGS_32 = ["--num-frames", "8", "--size", "32", "--workers", "0"]


@pytest.fixture()
def library(tmp_path) -> Path:
    root = tmp_path / "v"
    root.mkdir()
    make_video(root / "video1.mp4", n=10, width=32, height=32)
    (root / "video3.mp4").write_bytes(b"this is not a video " * 20)
    (tmp_path / "m.csv").write_text("key,vid_key,video_id,sentence\nret1,msr1,video1,a man\n"
                                    "ret3,msr3,video3,the woman\n")
    return root


def _failed_lines(err: str, name: str) -> list[str]:
    return [ln for ln in err.splitlines() if name in ln]


def _reason(line: str, path: str) -> str:
    return line.split(path + ": ", 1)[1] if path + ": " in line else line.rsplit("video3: ", 1)[1]


@pytest.mark.usefixtures("reuse_model")
def test_one_reason_listed_once_and_one_exit_status(library, tmp_path, model, wargs, capsys, monkeypatch):
    import milnce.commands.eval as eval_cmd
    import milnce.commands.extract as extract_cmd

    monkeypatch.setattr(extract_cmd, "model_from_args", lambda args: model)
    monkeypatch.setattr(eval_cmd, "model_from_args", lambda args: model)
    bad = str(library / "video3.mp4")
    runs = {
        "index": ["index", str(library), "--index", str(tmp_path / "idx"), "--quiet", *ARGS_32, *wargs],
        "extract": ["extract", str(library), "--out", str(tmp_path / "ext"), *ARGS_32, *wargs],  # with a progress bar
        "eval": ["eval", "msrvtt", "--videos", str(library), "--annotations", str(tmp_path / "m.csv"), "--quiet",
                 "--cache", str(tmp_path / "cache"), *ARGS_32, *wargs],
    }
    reasons: dict[str, str] = {}
    for attempt in (1, 2):  # the rerun meets the known failure again (index skips it)
        for name, argv in runs.items():
            rc = main(argv)
            err = capsys.readouterr().err
            assert rc == 1, (name, attempt, err)
            lines = _failed_lines(err, "video3")
            assert len(lines) == 1, (name, attempt, err)  # listed once
            why = _reason(lines[0], bad)
            assert not re.search(r"Errno|Error\b|Error:|\[", why), (name, why)  # no class, no errno
            reasons[f"{name}{attempt}"] = why
    assert len(set(reasons.values())) == 1, reasons
    assert next(iter(reasons.values())).startswith("not a readable video file")


def _cli(index_dir: Path, queries: list[str], wargs: list[str], capsys: pytest.CaptureFixture[str],
         *extra: str) -> list[list]:
    assert main(["search", "--index", str(index_dir), *queries, "-k", "20", *(extra or ["--no-merge"]), "--json", *wargs]) == 0
    out = json.loads(capsys.readouterr().out)
    return [[(m["path"], m["start"], m["end"], m["score"]) for m in r["moments"]] for r in out["results"]]


@pytest.mark.usefixtures("reuse_model")
def test_cli_batch_and_alone_give_the_same_scores(index_dir, wargs, capsys):
    together = _cli(index_dir, SCORE_QUERIES, wargs, capsys)
    for q, res in zip(SCORE_QUERIES[:3], together):
        assert _cli(index_dir, [q], wargs, capsys) == [res], q
    merged = _cli(index_dir, SCORE_QUERIES, wargs, capsys, "--videos")
    assert _cli(index_dir, SCORE_QUERIES[4:5], wargs, capsys, "--videos") == merged[4:5]


@needs_serve
@pytest.mark.usefixtures("reuse_model")
def test_cli_and_api_give_the_same_scores(index_dir, model, wargs, capsys):
    pytest.importorskip("fastapi")

    from milnce.server.service import SearchService

    together = _cli(index_dir, SCORE_QUERIES, wargs, capsys)
    batch = model.encode_text(SCORE_QUERIES).numpy()
    with Index.open(index_dir, model) as index, TestClient(create_app(index, model)) as client:
        service = SearchService(index, model)
        for i, (q, res) in enumerate(zip(SCORE_QUERIES, together)):
            assert np.array_equal(service.text_embedding(q), batch[i]), q  # the server embeds one at a time
            body = client.get("/api/search", params={"q": q, "k": 20, "merge": "false"}).json()
            api = [(m["path"], m["start"], m["end"], m["score"]) for m in body["results"]]
            # the API shows scores to 5 decimals: the same moments, in the same order, the same score
            assert api == [(p, a, b, round(sc, 5)) for p, a, b, sc in res], q
            curve = client.get(f"/api/videos/{body['results'][0]['video_id']}/curve", params={"q": q}).json()
            best = max(curve["scores"])
            assert best == round(max(sc for p, _, _, sc in res if p == body["results"][0]["path"]), 4)

def _video(path: Path, **kw: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return make_video(path, **kw)


def _build(tmp_path: Path, weights: Path, vocab: Path | None) -> Path:
    video = _video(tmp_path / "v" / "a.mp4", n=20)
    model = milnce.load_model(weights, vocab, download=False)
    idx = tmp_path / "idx"
    build_index([video.parent], idx, model, progress=False, window=WindowSettings.for_model(model, **WINDOW_32), run=RunOptions(workers=0))
    return idx


def _search(idx: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str, str]:
    rc = main(["search", "--index", str(idx), "red square", "--json", "--no-download", *extra])
    out, err = capsys.readouterr()
    return rc, out, err


def test_search_loads_the_recorded_weights_file(tmp_path, capsys):
    weights, vocab = write_checkpoint(tmp_path / "w")
    idx = _build(tmp_path, weights, vocab)
    rec = recorded_weights(idx)
    assert rec is not None and rec.kind == "file"
    assert rec.weights == str(weights.resolve()) and rec.vocab == str(vocab.resolve())
    # no --weights, downloads off: before the record this failed (the published weights are not cached)
    rc, out, err = _search(idx, capsys)
    assert rc == 0, err
    assert json.loads(out.splitlines()[-1]) or out


def test_moved_weights_are_one_line_naming_the_record(tmp_path, capsys):
    weights, vocab = write_checkpoint(tmp_path / "w")
    idx = _build(tmp_path, weights, vocab)
    fp = Index.open(idx).weights_id
    shutil.move(str(weights), str(tmp_path / "elsewhere.pth"))
    rc, out, err = _search(idx, capsys)
    assert rc == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert str(weights.resolve()) in lines[0] and fp in lines[0] and "--weights" in lines[0]
    assert "no longer there" in lines[0]
    # --weights still works (the moved file: same fingerprint)
    rc, out, err = _search(idx, capsys, "--weights", str(tmp_path / "elsewhere.pth"), "--vocab", str(vocab))
    assert rc == 0, err


def test_changed_weights_are_refused_naming_the_record(tmp_path, capsys):
    weights, vocab = write_checkpoint(tmp_path / "w")
    idx = _build(tmp_path, weights, vocab)
    fp = Index.open(idx).weights_id
    torch.save(random_state_dict(seed=5), weights)  # same path, other weights
    rc, out, err = _search(idx, capsys)
    assert rc == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and fp in lines[0] and "changed since" in lines[0] and "--weights" in lines[0], err
    with pytest.raises(IndexModelError):
        rec = recorded_weights(idx)
        assert rec is not None
        rec.check(milnce.load_model(weights, vocab, download=False))


def test_old_index_without_record_uses_the_default_weights(tmp_path, capsys):
    weights, vocab = write_checkpoint(tmp_path / "w")
    idx = _build(tmp_path, weights, vocab)
    con = sqlite3.connect(idx / "index.sqlite")
    con.execute("DELETE FROM meta WHERE key='weights_source'")
    con.commit()
    con.close()
    assert recorded_weights(idx) is None
    rc, out, err = _search(idx, capsys)
    assert rc != 0 and "published weights are not in the cache" in err  # as before: the registry default


def test_run_folder_is_recorded_and_found_again(tmp_path, capsys):
    run = tmp_path / "runs" / "synthetic"
    (run / "checkpoints").mkdir(parents=True)
    torch.save(random_state_dict(), run / "checkpoints" / "step_00000002.pt")
    np.save(run / "vocab.npy", np.asarray(VOCAB, dtype=str), allow_pickle=False)
    (run / "config.json").write_text(json.dumps({"num_frames": 8, "fps": 4.0, "size": 32}))
    video = _video(tmp_path / "v" / "a.mp4", n=32, rate=4)  # 8 s
    model = milnce.load_model(run, download=False)
    assert model.weights_source == {"kind": "run", "weights": str(run.resolve()), "vocab": str((run / "vocab.npy").resolve())}
    idx = tmp_path / "idx"
    build_index([video.parent], idx, model, run=RunOptions(workers=0), progress=False)
    rec = recorded_weights(idx)
    assert rec is not None and rec.kind == "run" and "run folder" in rec.describe()
    rc, out, err = _search(idx, capsys)
    assert rc == 0, err
    shutil.rmtree(run)
    rc, out, err = _search(idx, capsys)
    assert rc == 2 and "run folder" in err and str(run.resolve()) in err


def test_cli_refuses_gaps_before_creating_the_index(tmp_path, capsys, wargs):
    video = tmp_path / "v" / "a.mp4"
    video.parent.mkdir()
    make_video(video, n=10)
    rc = main(["index", str(video.parent), "--index", str(tmp_path / "idx"), "--num-frames", "8", "--stride", "16",
               "--quiet", *wargs])
    assert rc == 2
    err = capsys.readouterr().err
    assert "--allow-gaps" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "idx").exists()


@pytest.mark.parametrize("opts", [["--fps", "inf"], ["--fps", "nan"], ["--size", "100000"], ["--stride", "0"]])
def test_index_bad_window_option_fails_before_creating_anything(tmp_path, capsys, opts):
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "a.mp4").write_bytes(b"x")
    ix = tmp_path / "ix"
    rc = main(["index", str(tmp_path / "v"), "--index", str(ix), "--no-download", *opts])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("milnce: error:") and len(err.strip().splitlines()) == 1
    assert not ix.exists()


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

EVIL = "a\nmilnce: error: forged\x1b[2J"


def test_error_line_is_one_line_whatever_the_name(tmp_path, capsys):
    for name in (EVIL, os.fsdecode(b"bad\xff\xfename")):
        assert main(["search", "--index", str(tmp_path / name), "words"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("milnce: error:") and "\x1b" not in err
        assert err.encode("utf-8", "strict")  # no raw byte that is not UTF-8


def test_error_line_escapes_raw_bytes(tmp_path, capsys):
    assert main(["search", "--index", str(tmp_path / os.fsdecode(b"bad\xff")), "words"]) == 2
    err = capsys.readouterr().err
    assert "bad\\xff" in err and err.encode("utf-8", "strict")


@pytest.mark.usefixtures("reuse_model")
def test_index_ann_small_index_stays_exact_and_rebuilds_damaged(tmp_path, vids, wargs, capsys):
    pytest.importorskip("faiss")
    ix = tmp_path / "ix"
    assert main(["index", str(vids / "red.mp4"), "--index", str(ix), "--ann", "--quiet", *SMALL_ARGS, *wargs]) == 0
    out = capsys.readouterr().out
    assert "ANN: not built" in out and "fewer than 50,000" in out
    assert not list(ix.glob("ann-*")) and Index.open(ix).ann_status()["state"] == "not built"
    args = ["index", str(vids / "red.mp4"), "--index", str(ix), "--ann", "--ann-min-windows", "1", "--quiet", "--json",
            *wargs]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)["ann"]
    os.truncate(next(ix.glob("ann-*.faiss")), 500)
    assert main(args) == 0
    again = json.loads(capsys.readouterr().out)["ann"]
    assert again["built"] > first["built"]  # rebuilt, not "exists, recall 1.000"
    with Index.open(ix) as r:
        assert r.ann_status()["state"] == "ok"


def _damage(ix: Path, sql: str, *params) -> None:
    con = sqlite3.connect(ix / "index.sqlite")
    con.execute(sql, params)
    con.commit()
    con.close()


@pytest.mark.usefixtures("reuse_model")
@pytest.mark.parametrize("sql, params, what", [
    ("UPDATE videos SET row_start=1000 WHERE id=(SELECT min(id) FROM videos)", (), "claims rows"),
    ("UPDATE videos SET row_start=(SELECT min(row_start) FROM videos) WHERE id=(SELECT max(id) FROM videos)", (), "share"),
    ("UPDATE videos SET num_windows=0 WHERE id=(SELECT min(id) FROM videos)", (), "has rows"),
    ("UPDATE meta SET value=? WHERE key='settings'", ("{fps: 10",), "not valid JSON"),
    ("UPDATE meta SET value=? WHERE key='settings'", (json.dumps({"fps": 1e-9, "num_frames": 8}),), "window settings"),
])


def test_damaged_rows_and_settings_are_refused(tmp_path, wargs, capsys, sql, params, what):
    synthetic_index(tmp_path / "ix", videos=3, windows=5).close()
    _damage(tmp_path / "ix", sql, *params)
    with pytest.raises(IndexDamagedError, match=what) as ei:
        Index.open(tmp_path / "ix")
    assert str(ei.value).startswith("index damaged:") and isinstance(ei.value, IndexFolderError)
    assert main(["search", "--index", str(tmp_path / "ix"), "red", *wargs]) == 2
    err = capsys.readouterr().err
    assert err.startswith("milnce: error: index damaged:") and len(err.strip().splitlines()) == 1


@pytest.mark.usefixtures("reuse_model")
def test_non_utf8_file_name_is_indexed(tmp_path, wargs, capsys):
    if os.fsencode("x") != b"x" or os.name == "nt":
        pytest.skip("POSIX bytes file names only")
    d = tmp_path / "v"
    make_scene_video(d / "plain.mp4", 2.0, (220, 30, 30), 1)
    raw = os.path.join(os.fsencode(str(d)), b"caf\xe9.mp4")
    os.rename(make_scene_video(d / "tmp.mp4", 2.0, (30, 30, 220), 4), raw)
    ix = tmp_path / "ix"
    rc = main(["index", str(d), "--index", str(ix), "--quiet", *SMALL_ARGS, *wargs])
    err = capsys.readouterr().err
    assert rc in (0, 1) and "Traceback" not in err
    with Index.open(ix) as r:
        names = {os.fsencode(v.path) for v in r.videos()} | {os.fsencode(p) for p, _ in r.errors()}
        assert raw in names  # indexed (or recorded as failed) under its exact name
        if rc == 0:
            assert any(os.path.isfile(v.path) and os.fsencode(v.path) == raw for v in r.videos())
    assert main(["search", "--index", str(ix), "blue ball", "-k", "5", *wargs]) == 0
    assert "caf\\xe9.mp4" in capsys.readouterr().out or rc == 1
    # a second run sees it unchanged
    assert main(["index", str(d), "--index", str(ix), "--quiet", "--json", *SMALL_ARGS, *wargs]) == rc
    assert json.loads(capsys.readouterr().out)["unchanged"] == (2 if rc == 0 else 1)


@pytest.mark.usefixtures("reuse_model")
def test_unreadable_folder_is_reported(tmp_path, vids, wargs, capsys, monkeypatch):
    d = tmp_path / "v"
    (d / "locked").mkdir(parents=True)
    make_scene_video(d / "ok.mp4", 2.0, (220, 30, 30), 1)
    locked = str(d / "locked")
    real = os.scandir

    def scandir(path="."):  # as for a chmod-000 folder (root can read those, so simulate it)
        if os.fspath(path) == locked:
            raise PermissionError(13, "Permission denied", locked)
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    ix = tmp_path / "ix"
    assert main(["index", str(d), "--index", str(ix), "--quiet", *SMALL_ARGS, *wargs]) == 1
    err = capsys.readouterr().err
    assert "locked" in err and "Permission denied" in err
    assert "locked" in (ix / "errors.log").read_text()
    seen = []
    assert find_videos([d], on_error=lambda p, r: seen.append((p, r))) == [str(d / "ok.mp4")]
    assert seen and seen[0][0] == locked


@pytest.mark.usefixtures("reuse_model")
def test_disk_full_while_creating_an_index_is_one_line(tmp_path, vids, wargs, capsys, monkeypatch):
    import milnce.index.writer as store

    def full(*a, **k):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(store.sqlite3, "connect", full)
    rc = main(["index", str(vids / "red.mp4"), "--index", str(tmp_path / "ix"), "--quiet", *SMALL_ARGS, *wargs])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("milnce: error:") and "disk is full" in err and len(err.strip().splitlines()) == 1


# --------------------------------------------------------------------------------------------
# 2, 4, 5. Validation, exit codes, ~
@pytest.mark.usefixtures("reuse_model")


def test_localize_tiny_fps_is_refused(vids, wargs, capsys):
    assert main(["localize", str(vids / "red.mp4"), "red", "--fps", "1e-9", *wargs]) == 2
    err = capsys.readouterr().err
    assert "fps" in err and len(err.strip().splitlines()) == 1


@pytest.mark.usefixtures("reuse_model")
def test_index_exit_code_1_and_failed_path_once(tmp_path, vids, wargs, capsys):
    d = tmp_path / "v"
    d.mkdir()
    make_scene_video(d / "ok.mp4", 2.0, (220, 30, 30), 1)
    (d / "broken.mp4").write_bytes(b"not a video" * 30)
    assert main(["index", str(d), "--index", str(tmp_path / "ix"), "--quiet", *SMALL_ARGS, *wargs]) == 1
    err = capsys.readouterr().err
    line = next(ln for ln in err.splitlines() if "broken.mp4" in ln)
    assert line.count("broken.mp4") == 1, line
    # the second run skips it (failed before, said in the summary), lists it again with the same
    # reason and exits 1 while it keeps failing (as extract and eval do)
    assert main(["index", str(d), "--index", str(tmp_path / "ix"), "--quiet", *SMALL_ARGS, *wargs]) == 1
    cap = capsys.readouterr()
    assert "failed before" in cap.out
    assert [ln for ln in cap.err.splitlines() if "broken.mp4" in ln] == [line]


# --------------------------------------------------------------------------------------------
# 6. CLI features
@pytest.mark.usefixtures("reuse_model")


def test_cli_like_queries_file_csv_and_remove(tmp_path, small_index, vids, wargs, capsys, monkeypatch):
    qf = tmp_path / "q.txt"
    qf.write_text("red square\n\n a blue ball \n")
    assert main(["search", "--index", str(small_index), "--queries-file", str(qf), "--csv", "-k", "3", *wargs]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert {r["query"] for r in rows} == {"red square", "a blue ball"}
    assert set(rows[0]) >= {"rank", "path", "start", "end", "score", "cosine", "percentile"}
    monkeypatch.setattr("sys.stdin", io.StringIO("green door\n"))
    assert main(["search", "--index", str(small_index), "--queries-file", "-", "--format", "json", *wargs]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["query"] for r in out["results"]] == ["green door"] and out["ann"] == "not built"
    with Index.open(small_index) as idx:
        red = idx.video_by_path(vids / "red.mp4")
    assert main(["search", "--index", str(small_index), "--like", f"{vids / 'red.mp4'}@0:01", "--json", *wargs]) == 0
    res = json.loads(capsys.readouterr().out)["results"][0]
    assert res["query"].startswith("like ") and res["moments"]
    assert all(m["video_id"] != red.id for m in res["moments"])
    assert main(["search", "--index", str(small_index), "--like", f"{red.id}@1.5", *wargs]) == 0
    assert "like " in capsys.readouterr().out
    assert main(["search", "--index", str(small_index), "--like", "999999", *wargs]) == 2
    assert main(["search", "--index", str(small_index), *wargs]) == 2
    assert "nothing to search" in capsys.readouterr().err
    # removal (on a copy)
    import shutil

    ix = tmp_path / "ix"
    shutil.copytree(small_index, ix)
    assert main(["remove", "--index", str(ix), str(vids / "red.mp4"), *wargs[:0]]) == 0
    assert "removed" in capsys.readouterr().out
    with Index.open(ix) as idx:
        assert idx.num_videos == 2 and idx.video_by_path(vids / "red.mp4") is None
    assert main(["remove", "--index", str(ix), str(vids / "red.mp4")]) == 2
    assert "not in the index" in capsys.readouterr().err


@pytest.mark.usefixtures("reuse_model")
def test_localize_shows_progress(vids, wargs, capsys):
    """The bar counts the one video, labelled with its name, to 100 %; ``--quiet`` prints none."""
    assert main(["localize", str(vids / "green.mp4"), "green door", *SMALL_ARGS, *wargs]) == 0
    err = capsys.readouterr().err
    final = [s for s in re.split(r"[\r\n]", err) if s.startswith("green.mp4:")][-1]
    assert re.match(r"green\.mp4: 100%\|[^|]*\| 1/1 \[[\d:]+<[\d:]+, +[\d.]+(video/s|s/video)\]$", final), final
    assert main(["localize", str(vids / "green.mp4"), "green door", *SMALL_ARGS, *wargs, "--quiet"]) == 0
    assert "green.mp4:" not in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# 7. The search page's command examples (docs/search.md) run as written


def _docs_commands(page: str) -> list[str]:
    """The ``milnce ...`` lines of a documentation page's introduction (before its first section)."""
    text = (Path(__file__).resolve().parents[2] / "docs" / page).read_text()
    body = text.split("\n## ", 1)[0]
    cmds = []
    for line in body.splitlines():
        s = line.strip()
        if s.startswith("milnce ") and not s.startswith("milnce serve"):
            cmds.append(re.sub(r"\s+#.*$", "", s))
    return cmds


@pytest.mark.usefixtures("reuse_model")
def test_readme_search_examples_run_as_written(tmp_path, vids, wargs, monkeypatch, capsys):
    """Every ``milnce ...`` line at the top of docs/search.md (its command summary), on generated
    videos (``~/videos`` and ``talk.mp4``) with the random-weights checkpoint."""
    home = tmp_path / "home"
    (home / "videos").mkdir(parents=True)
    for name in ("red.mp4", "green.mp4", "blue.mp4"):
        (home / "videos" / name).write_bytes((vids / name).read_bytes())
    (home / "videos" / "old.mp4").write_bytes((vids / "red.mp4").read_bytes())
    (home / "talk.mp4").write_bytes((vids / "green.mp4").read_bytes())
    (home / "queries.txt").write_text("cut tomato\npour water\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(home)
    cmds = _docs_commands("search.md")
    assert len(cmds) >= 8
    ran = 0
    for line in cmds:
        argv = [os.path.expanduser(a) if a.startswith("~") else a for a in shlex.split(line)][1:]
        if argv[0] == "demo" and "--videos" not in argv:
            print(f"skipped (needs the network): {line}")
            continue
        argv = [str(home / "videos") if a == "DIR" else a for a in argv]
        argv = [a for a in argv if a not in ("s3d_howto100m.pth", "s3d_dict.npy", "--weights", "--vocab")]
        small = [] if argv[0] in ("search", "remove") else SMALL_ARGS if "--index" in argv or argv[0] in (
            "localize", "demo") else []
        if argv[0] == "index" and (home / "my_index").exists():
            small = []  # an existing index keeps its own settings
        extra = [] if argv[0] == "remove" else [*small, *wargs]
        rc = main([*argv, *extra])
        capsys.readouterr()
        assert rc == 0, line
        ran += 1
    assert ran >= 8


# -- the command ---------------------------------------------------------------------------------


@pytest.fixture
def cli_model(model, monkeypatch):
    monkeypatch.setattr("milnce.commands.search.model_from_args", lambda args: model)
    monkeypatch.setattr("milnce.index.IndexReader.check_model", lambda self, m: None)
    return model


def test_cli_filters_negatives_offset(big, cli_model, capsys):
    import json

    ix = str(big)
    assert main(["search", "--index", ix, "cut tomato", "-k", "6", "--json", "--not", "pour water", "--under", f"{ROOT}/garden",
                 "--min-duration", "100", "--offset", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["filter"].startswith("under") and out["not"] == ["pour water"] and out["offset"] == 2
    assert out["mode"] == "exact"
    moments = out["results"][0]["moments"]
    assert len(moments) == 6 and all(m["path"].startswith(f"{ROOT}/garden/") for m in moments)
    with Index.open(big, cli_model) as index:
        want = index.search("cut tomato", 8, negatives=["pour water"], video_filter=VideoFilter(
            under=f"{ROOT}/garden", duration_min=100.0))[2:]
    assert [(m["video_id"], m["start"]) for m in moments] == [(m.video_id, m.start) for m in want]
    # a table says when the filter leaves fewer than -k results
    assert main(["search", "--index", ix, "cut tomato", "-k", "100000", "--path-glob", "dog*", "--list-videos"]) == 0
    out = capsys.readouterr().out
    assert "results within the filter)" in out and "filter: path dog*" in out


@pytest.mark.parametrize("argv, words", [
    (["--min-duration", "50", "--max-duration", "10"], "impossible duration range"),
    (["--after", "2024-05-01", "--before", "2024-01-01"], "impossible date range"),
    (["--after", "yesterday"], "is not a date"),
    (["--path-glob", "../../etc/*"], "would leave the collection"),
    (["--path-glob", "/etc/*"], "relative to the collection"),
    (["--under", "/etc"], "outside the indexed collection"),
    (["--path-glob", "*.avi"], "no indexed video matches"),
    (["--not-weight", "-1", "--not", "x"], "--not-weight must be"),
    (["--not-weight", "1"], "needs at least one --not"),
    (["--not", "qqqzzz"], "negative term 'qqqzzz'"),
    (["--offset", "-1"], "--offset must be"),
])


def test_cli_bad_filters_one_line_each(big, cli_model, capsys, argv, words):
    assert main(["search", "--index", str(big), "cut tomato", *argv]) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1 and "Traceback" not in err
    assert os.path.isdir(big)


@pytest.fixture(scope="module")
def lib(tmp_path_factory, model):

    root = tmp_path_factory.mktemp("trust")
    vids = root / "videos"
    vids.mkdir()
    make_video(vids / "a.mp4", n=40, width=96, height=64)
    make_video(vids / "b.mp4", n=40, width=96, height=64, marker=True)
    build_index([vids], root / "index", model, progress=False, window=WindowSettings.for_model(model, num_frames=8, size=32, stride=8))
    index = Index.open(root / "index", model)
    ids = {Path(r.path).name: r.id for r in index.videos()}
    yield {"root": root, "videos": vids, "index": index, "index_dir": root / "index", "model": model, "ids": ids}
    index.close()


@pytest.fixture(scope="module")
def client(lib):
    with TestClient(create_app(lib["index"], lib["model"])) as c:
        yield c


# ----- 5. config, curve, more like this, normalised scores -----------------------------------


@needs_serve
def test_one_default_k(client, lib):
    cfg = client.get("/api/config").json()
    assert cfg["default_k"] == DEFAULT_K == 10 and DEFAULT_K in cfg["k_choices"]
    assert client.get("/api/search", params={"q": "cut"}).json()["k"] == DEFAULT_K
    params = {p["name"]: p for p in client.get("/openapi.json").json()["paths"]["/api/search"]["get"]["parameters"]}
    assert params["k"]["schema"]["default"] == DEFAULT_K
    html = client.get("/").text
    assert "selected" not in html.split('id="k"', 1)[1].split("</select>", 1)[0]  # the UI takes it from /api/config
    from milnce.cli import build_parser

    args = build_parser().parse_args(["search", "--index", "IDX", "q"])
    assert args.k == DEFAULT_K


@pytest.mark.usefixtures("reuse_model")
def test_search_like_superscript_is_a_missing_path_not_a_traceback(tmp_path, capsys, wargs, model):
    import numpy as np

    with Index.create(tmp_path / "ix", model) as ix:
        ix.add_video("/nonexistent/v.mp4", fake_emb(4, np.random.default_rng(0)), size=10, mtime=1.0,
                     content_hash="h")
    for like, words in (("²@1", "no such video file"), ("1@1_0", "START")):
        rc = main(["search", "--index", str(tmp_path / "ix"), "--like", like, *wargs])
        err = capsys.readouterr().err
        assert rc == 2 and words in err and err.count("\n") == 1, err
