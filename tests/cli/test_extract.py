"""``milnce extract`` end to end (``milnce.commands.extract``): the CLI run through ``main(argv)`` or a
subprocess."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import milnce.commands.extract as extract_cmd
from ffmpeg_reference import HAVE_FFMPEG, WHY_NO_FFMPEG, extractor_chunks
from index_fixtures import SMALL, SMALL_ARGS, fake_model
from milnce.cli import main
from milnce.errors import UsageError
from milnce.extract import (
    extract,
    read_feature_file,
)
from milnce.index import (
    Index,
    IndexMismatchError,
    build_index,
)
from milnce.listfiles import MAX_CSV_ROW, MAX_PATH_LINE
from milnce.video.pipeline import MAX_BATCH, resolve_batch_size, resolve_workers
from milnce.windows import WindowSettings
from video_fixtures import (
    MB,
    SRC,
    assert_same_files,
    ckpt_args,
    cli_inputs,
    make_audio_only,
    make_video,
    npz_files,
    one_line,
    one_video_folder,
    rss,
    video_tree,
)
from video_fixtures import SMALL_WINDOWS as S

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


@pytest.fixture(scope="session")
def inputs(tmp_path_factory):
    return cli_inputs(tmp_path_factory)  # read only


@no_cuda
@pytest.mark.parametrize("device", ["cuda:0", "cuda"])
def test_extract_on_cuda_without_cuda_is_one_line(inputs, tmp_path, capsys, device):
    video, wargs = inputs
    assert main(["extract", str(video), "--out", str(tmp_path / "out"), "--device", device, *wargs]) == 2
    line = one_line(capsys)
    assert line.startswith("milnce: error:") and "CUDA is not available" in line
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="session")
def tree(tmp_path_factory):
    return video_tree(tmp_path_factory)  # every change a test makes in it is undone


def test_cli_extract_exit_codes_and_check(checkpoint, tree, tmp_path, capsys, fast_model):

    out = tmp_path / "o"
    rc = main(["extract", str(tree / "good"), str(tree / "bad" / "trunc.mp4"), "--out", str(out), "--workers", "0",
               *ckpt_args(checkpoint)])
    err = capsys.readouterr().err
    assert rc == 1 and "trunc.mp4" in err and "1 failed" in err
    rc = main(["extract", "--check", str(out), str(tree / "good"), str(tree / "bad" / "trunc.mp4")])
    text = capsys.readouterr().out
    assert rc == 1 and "3 of 4" in text and "trunc.mp4" in text
    rc = main(["extract", "--check", str(out), str(tree / "good"), "--json"])
    assert rc == 0
    rc = main(["extract", str(tree / "good"), "--out", str(out), "--shard", "3/2", *ckpt_args(checkpoint)])
    assert rc == 2 and "shard" in capsys.readouterr().err


def _run_cli(args, env=None, **kw):
    e = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    e.update(env or {})
    return subprocess.Popen([sys.executable, "-m", "milnce.cli", *args], env=e, **kw)


def _children(pid: int) -> set[int]:
    out: set[int] = set()
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            kids = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        for k in map(int, kids):
            if k not in out:
                out.add(k)
                todo.append(k)
    return out


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc")
def test_kill9_then_rerun_equals_clean_run_and_two_writers(checkpoint, model, tree, tmp_path):
    src = tmp_path / "many"
    src.mkdir()
    for i in range(5):
        shutil.copy(tree / "good" / ("a.mp4" if i % 2 else "sub/b.mp4"), src / f"v{i}.mp4")
    clean = tmp_path / "clean"
    extract([src], clean, model, S, workers=0, batch_size=2)
    args = ["extract", str(src), "--workers", "1", "--batch-size", "2", *ckpt_args(checkpoint)]
    out = tmp_path / "out"
    p = _run_cli([*args, "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    t0 = time.time()
    while not list(out.glob("*.npz")) and time.time() - t0 < 60 and p.poll() is None:
        time.sleep(0.02)
    kids = _children(p.pid)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert p.returncode == -signal.SIGKILL, p.stderr.read().decode()
    for _ in range(100):  # the decoding processes follow their parent
        if not any(Path(f"/proc/{k}").exists() and "zombie" not in Path(f"/proc/{k}/status").read_text().lower()
                   for k in kids):
            break
        time.sleep(0.1)
    else:
        pytest.fail("decoding processes outlived a kill -9 of their parent")
    for f in out.glob("*.npz"):  # whatever exists is complete
        read_feature_file(f)
    # two processes on the same (whole) share at once: both finish, files stay complete
    args[args.index("--workers") + 1] = "0"
    procs = [_run_cli([*args, "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _ in range(2)]
    for q in procs:
        _, err = q.communicate(timeout=240)
        assert q.returncode == 0, err.decode()
    assert_same_files(npz_files(clean), npz_files(out))
    assert sorted(os.listdir(out)) == sorted(os.listdir(clean))  # no temporary files left


ESC_NAME = "evil\x1b[2J\x1b[31mred\nfailed: forged"  # clears the screen, colours, forges a line


# ----- gap 5: ESC sequences and newlines in names are printed escaped ---------------------------


def _assert_escaped(text: str) -> None:
    assert "\x1b" not in text and "\r" not in text
    assert not any(line.lstrip().startswith("failed: forged") for line in text.splitlines())
    assert "\\x1b[2J" in text and "\\x0afailed: forged" in text


def test_extract_listings_escape_control_characters(tmp_path, model, monkeypatch, wargs, capsys):
    import milnce.commands.extract as extract_cmd

    monkeypatch.setattr(extract_cmd, "model_from_args", lambda args: model)
    vids = tmp_path / "v"
    vids.mkdir()
    (vids / f"{ESC_NAME}.mp4").write_bytes(b"not a video at all")
    out = tmp_path / "out"
    rc = main(["extract", str(vids), "--out", str(out), "--num-frames", "8", "--size", "32", "--workers", "0",
               "--quiet", *wargs])
    cap = capsys.readouterr()
    assert rc == 1
    _assert_escaped(cap.err)
    assert "\x1b" not in cap.out
    with open(out / "failures.csv", newline="", encoding="utf-8") as f:  # the reason does not repeat the path
        rows = list(__import__("csv").DictReader(f))
    assert [Path(r["path"]).name for r in rows] == [f"{ESC_NAME}.mp4"] and "forged" not in rows[0]["reason"]
    rc = main(["extract", str(vids), "--check", str(out)])
    cap = capsys.readouterr()
    assert rc == 1
    _assert_escaped(cap.out + cap.err)


QUERIES = ["red square moving", "a blue ball", "green door"]
# ``video_dir`` (red, green, sub/blue scene videos, a broken .mp4, a .txt) is a session fixture of index_fixtures.


@pytest.mark.usefixtures("reuse_model")
def test_index_from_features_equals_direct_index(tmp_path, video_dir, wargs, model, checkpoint, monkeypatch, capsys):
    """extract -> index --from-features (no model) gives the index 'milnce index' builds directly."""
    import milnce.commands.extract as cmd_extract
    from milnce.extract.store import write_feature_file
    from milnce.index import FeaturesMismatchError, index_features

    monkeypatch.setattr(cmd_extract, "model_from_args", lambda args: model)
    vids = tmp_path / "v"
    vids.mkdir()
    for name in ("red.mp4", "green.mp4", "broken.mp4"):
        shutil.copy2(video_dir / name, vids / name)
    out, ix_f, ix_d = tmp_path / "features", tmp_path / "ix_f", tmp_path / "ix_d"
    run = ["--workers", "1", "--batch-size", "8"]  # the same batches (the CPU kernels round by batch)
    assert main(["extract", str(vids), "--out", str(out), "--features", "video_embedding", *run,
                 "--quiet", *SMALL_ARGS, *wargs]) == 1  # broken.mp4
    capsys.readouterr()
    monkeypatch.setattr("milnce.commands.search.model_from_args", lambda args: pytest.fail("model loaded"))
    assert main(["index", "--from-features", str(out), "--index", str(ix_f), "--root", str(vids), "--quiet", "--json"]) == 1
    rep = json.loads(capsys.readouterr().out)
    assert sorted(Path(p).name for p in rep["added"]) == ["green.mp4", "red.mp4"]
    assert [Path(p).name for p, _ in rep["failed"]] == ["broken.mp4"]
    monkeypatch.undo()
    assert main(["index", str(vids), "--index", str(ix_d), "--quiet", *run, *SMALL_ARGS, *wargs]) == 1
    with Index.open(ix_f, model) as a, Index.open(ix_d, model) as b:
        assert a.meta["weights_id"] == b.meta["weights_id"] == model.weights_id
        assert a.settings == b.settings == {**SMALL, "crop": "center"}
        assert {v.path: (r.size, r.mtime, r.hash, r.num_windows) for v in a.videos() for r in [a._records[v.id]]} == \
            {v.path: (r.size, r.mtime, r.hash, r.num_windows) for v in b.videos() for r in [b._records[v.id]]}
        assert [Path(p).name for p, _ in a.errors()] == ["broken.mp4"]
        ra, rb = a.search(QUERIES, k=5), b.search(QUERIES, k=5)
        for ma, mb in zip(ra, rb):
            assert [(m.path, m.start, m.end) for m in ma] == [(m.path, m.start, m.end) for m in mb]
            np.testing.assert_allclose([m.score for m in ma], [m.score for m in mb], rtol=1e-5)
    # a rerun skips everything; a later 'milnce index' of the videos sees them unchanged
    capsys.readouterr()
    # exit 1 while a listed failure remains (broken.mp4), as on the first run and in extract/eval
    assert main(["index", "--from-features", str(out), "--index", str(ix_f), "--root", str(vids), "--quiet", "--json"]) == 1
    rep = json.loads(capsys.readouterr().out)
    assert rep["unchanged"] == 2 and rep["previously_failed"] == 1 and not rep["added"]
    r = build_index([vids], ix_f, model, progress=False)
    assert r.unchanged == 2 and not r.added and not r.updated
    # features of other settings are refused before anything is written
    ff = read_feature_file(out / "red.npz")
    meta = {**ff.meta, "settings": {**ff.meta["settings"], "stride": 8}}
    write_feature_file(str(out / "zz" / "odd.npz"), {"video_embedding": ff.embeddings, "start": ff.starts,
                                                     "end": ff.ends, "path": np.asarray(ff.path)}, meta)
    with pytest.raises(FeaturesMismatchError, match="mixes features"):
        index_features(out, tmp_path / "ix_new", progress=False)
    assert not (tmp_path / "ix_new").exists()
    # an index of other weights is refused; other window options than the features' too
    shutil.rmtree(out / "zz")
    Index.create(tmp_path / "ix_other", fake_model("other"), WindowSettings(**SMALL)).close()
    with pytest.raises(IndexMismatchError, match="other weights"):
        index_features(out, tmp_path / "ix_other", progress=False)
    with pytest.raises(FeaturesMismatchError):
        index_features(out, ix_f, progress=False, settings={"stride": 8})
    assert main(["index", "--from-features", str(out), "--index", str(tmp_path / "ix3"), "--stride", "8",
                 "--quiet"]) == 2
    assert "stride=4, not 8" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["huge.txt", "huge.csv"])
def test_extract_list_huge_line_refused_in_one_line(tmp_path, capsys, name):
    lst = tmp_path / name
    with open(lst, "wb") as f:  # 8 MiB in one line, no newline: never read whole
        f.truncate(0)
        f.write(b"video_path\n" if name.endswith(".csv") else b"")
        block = b"a" * (1 << 20)
        for _ in range(8):
            f.write(block)
    before = rss()
    assert main(["extract", str(lst), "--out", str(tmp_path / "out")]) == 2
    line = one_line(capsys)
    bound = MAX_CSV_ROW if name.endswith(".csv") else MAX_PATH_LINE
    assert name in line and f"longer than {bound:,} characters" in line
    assert rss() - before < 200 * MB
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# ------------------------------------------------------------------------------ extraction


@pytest.fixture(scope="session")
def folder(tmp_path_factory):
    return one_video_folder(tmp_path_factory)  # read only


def test_unreadable_video_with_a_non_utf8_name(model, tmp_path, capsys, checkpoint, fast_model):
    d = tmp_path / "v"
    d.mkdir()
    make_video(d / "a.mp4", n=10)
    bad = os.path.join(os.fsencode(d), b"bad\xff.mp4")
    with open(bad, "wb") as f:
        f.write(b"not a video\n" * 10)
    out = tmp_path / "out"
    rc = main(["extract", str(d), "--out", str(out), *ckpt_args(checkpoint, "--workers", "0")])
    err = capsys.readouterr().err
    assert rc == 1 and "bad\\xff.mp4" in err and "Traceback" not in err
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")]
    raw = (out / "failures.csv").read_bytes()
    assert b"bad\xff.mp4" in raw
    path, reason = raw.decode("utf-8", "surrogateescape").splitlines()[1].split(",", 1)
    assert "bad" not in reason  # the path is in its own column only
    assert main(["extract", str(d), "--out", str(out), *ckpt_args(checkpoint, "--workers", "0")]) == 1  # the rerun too


def test_truncated_video_is_said_in_extract_and_encode_video_file(model, tmp_path, capsys, checkpoint, caplog,
                                                                  fast_model):
    good = make_video(tmp_path / "full.mkv", n=40, rate=10, codec="mpeg4", options={"qscale": "2"})
    d = tmp_path / "v"
    d.mkdir()
    data = good.read_bytes()
    (d / "cut.mkv").write_bytes(data[: len(data) // 2])
    assert main(["extract", str(d), "--out", str(tmp_path / "out"), *ckpt_args(checkpoint, "--workers", "0")]) == 0
    err = capsys.readouterr().err
    assert "milnce: " in err and "cut.mkv" in err and "truncated" in err
    with caplog.at_level(logging.WARNING, logger="milnce.video"):
        model.encode_video_file(d / "cut.mkv", num_frames=8, size=32)
    assert "truncated" in caplog.text


def test_huge_batch_size_is_one_line(tmp_path, folder, capsys, checkpoint):
    args = ckpt_args(checkpoint, "--workers", "0")
    rc = main(["extract", str(folder), "--out", str(tmp_path / "o"), *args, "--batch-size", "100000000"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("milnce: error:") and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_extract_verify_redoes_a_flipped_byte(tmp_path, capsys, wargs, monkeypatch, model):
    monkeypatch.setattr(extract_cmd, "model_from_args", lambda args: model)
    (tmp_path / "in").mkdir()
    make_video(tmp_path / "in" / "a.b.mp4", n=16, rate=16, width=48, height=32)
    out = tmp_path / "o"
    args = ["extract", str(tmp_path / "in"), "--recipe", "univl", "--out", str(out), "--workers", "0", "--quiet",
            *wargs]
    assert main(args) == 0
    f = out / "a.b.npy"
    good = f.read_bytes()
    raw = bytearray(good)
    raw[200] ^= 0x01
    f.write_bytes(bytes(raw))
    capsys.readouterr()
    check = ["extract", "--check", str(out), str(tmp_path / "in"), "--recipe", "univl"]
    assert main(check) == 0  # the cheap check: header and size agree
    assert main([*check, "--verify"]) == 1
    assert "SHA-256" in capsys.readouterr().out
    assert main([*args, "--json", "--verify"]) == 0
    assert json.loads(capsys.readouterr().out)["redone"] == 1
    assert f.read_bytes() == good  # the same rows again
    assert main([*check, "--verify"]) == 0


@pytest.fixture()
def fast_model(monkeypatch, checkpoint, model):
    """``milnce extract`` runs (recipe or not) get the already-loaded conftest model (loading takes seconds)."""
    monkeypatch.setattr(extract_cmd, "model_from_args", lambda args: model)
    return model


@pytest.mark.parametrize("opts,named", [(["--fps", "10"], "--fps"), (["--num-frames", "32"], "--num-frames"),
                                        (["--pad", "repeat"], "--pad"), (["--crop", "square"], "--crop"),
                                        (["--start", "1"], "--start"), (["--features", "mixed_5c"], "--features")])
def test_conflicting_options_are_refused_naming_the_option(tmp_path, capsys, wargs, opts, named):
    v = make_video(tmp_path / "a.mp4")
    rc = main(["extract", str(v), "--recipe", "videoclip", "--out", str(tmp_path / "o"), *opts, *wargs])
    err = capsys.readouterr().err
    assert rc != 0 and named in err and "videoclip" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_same_stem_refused_naming_both(tmp_path, capsys, wargs):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    x = make_video(tmp_path / "a" / "clip.mp4")
    y = make_video(tmp_path / "b" / "clip.mkv")
    rc = main(["extract", str(x), str(y), "--recipe", "univl", "--out", str(tmp_path / "o"), *wargs])
    err = capsys.readouterr().err
    assert rc != 0 and str(x) in err and str(y) in err and "'clip'" in err


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_FFMPEG, reason=WHY_NO_FFMPEG)
def test_videoclip_end_to_end_matches_the_reference(tmp_path, capsys, wargs, fast_model):
    """Rows, dtype, layout and per-row cosine to the reference pipeline (its ffmpeg frames
    through the same weights), plus resume and --check."""
    (tmp_path / "in").mkdir()
    v = make_video(tmp_path / "in" / "vid_a.mp4", n=40, rate=25, width=80, height=48, marker=True)  # 1.6 s
    out = tmp_path / "o"
    args = ["extract", str(tmp_path / "in"), "--recipe", "videoclip", "--out", str(out), "--workers", "0",
            "--quiet", *wargs]
    assert main(args) == 0
    rows = np.load(out / "vid_a.npy", allow_pickle=False)
    assert rows.dtype == np.float16 and rows.shape == (2, 512)
    np.testing.assert_allclose(np.linalg.norm(rows.astype(np.float32), axis=1), 1.0, atol=2e-3)
    ref = extractor_chunks(str(v), 30)
    with torch.inference_mode():
        e = fast_model.encode_video(torch.from_numpy(ref).permute(0, 4, 1, 2, 3).float().div(255)).float()
    e = torch.nn.functional.normalize(e, dim=1).half().float()
    cos = torch.nn.functional.cosine_similarity(e, torch.from_numpy(rows.astype(np.float32)), dim=1)
    assert float(cos.min()) >= 0.999
    assert sorted(os.listdir(out)) == [".milnce", "failures.csv", "milnce-recipe.json", "vid_a.npy"]
    side = json.loads((out / ".milnce" / "vid_a.json").read_text())
    assert side["rows"] == 2 and side["settings"]["decoder"] == "ffmpeg" and side["source"]["size"] > 0
    capsys.readouterr()
    assert main([*args, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["skipped"] == 1
    assert main(["extract", "--check", str(out), str(tmp_path / "in"), "--recipe", "videoclip"]) == 0


def test_univl_bad_inputs_listed_and_the_rest_written(tmp_path, capsys, wargs, fast_model):
    d = tmp_path / "in"
    d.mkdir()
    make_video(d / "good.mp4", n=10, rate=25, width=64, height=48)
    (d / "empty.mp4").write_bytes(b"")
    make_audio_only(d / "audio.mp4")
    good = make_video(tmp_path / "t.mp4", n=30, rate=25, width=64, height=48)
    (d / "trunc.mp4").write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    whole = make_video(tmp_path / "t.mkv", n=75, rate=25, width=64, height=48)  # 3 s, header first
    (d / "cut.mkv").write_bytes(whole.read_bytes()[: whole.stat().st_size * 6 // 10])
    bad_name = os.fsdecode(b"caf\xe9.mp4")
    tmp = make_video(tmp_path / "cafe.mp4", n=5, rate=25, width=64, height=48)
    os.rename(tmp, os.path.join(os.fsencode(d), b"caf\xe9.mp4"))  # a name that is not UTF-8
    rc = main(["extract", str(d), "--recipe", "univl", "--out", str(tmp_path / "o"), "--workers", "0", "--quiet",
               *wargs])
    assert rc == 1
    g = np.load(tmp_path / "o" / "good.npy", allow_pickle=False)
    assert g.dtype == np.float16 and g.shape == (1, 1024)
    failed = (tmp_path / "o" / "failures.csv").read_text(encoding="utf-8", errors="replace")
    assert "empty.mp4" in failed and "audio.mp4" in failed
    cut = np.load(tmp_path / "o" / "cut.npy", allow_pickle=False)  # the rows of what could be decoded
    assert 1 <= cut.shape[0] < 3 and "cut.mkv" not in failed
    if HAVE_FFMPEG:
        assert cut.shape[0] == len(extractor_chunks(str(d / "cut.mkv"), 16))
    assert os.path.exists(os.path.join(os.fsencode(tmp_path / "o"), b"caf\xe9.npy")) or bad_name in failed


def test_recipe_verify_finds_and_redoes_a_damaged_npy(tmp_path, capsys, wargs, fast_model):
    """``--verify`` sits behind the same layout calls as the default ``.npz`` tree."""
    (tmp_path / "in").mkdir()
    make_video(tmp_path / "in" / "v.mp4", n=16, rate=16, width=48, height=32)
    out = tmp_path / "o"
    args = ["extract", str(tmp_path / "in"), "--recipe", "univl", "--out", str(out), "--workers", "0", "--quiet",
            *wargs]
    assert main(args) == 0
    f = out / "v.npy"
    good = f.read_bytes()
    f.write_bytes(good[:-64] + b"\xff" * 64)  # header intact (the cheap check passes), values NaN
    check = ["extract", "--check", str(out), str(tmp_path / "in"), "--recipe", "univl"]
    assert main(check) == 0
    assert main([*check, "--verify-files"]) == 1
    assert "non-finite" in capsys.readouterr().out
    assert main([*args, "--json"]) == 0 and json.loads(capsys.readouterr().out)["skipped"] == 1
    assert main([*args, "--json", "--verify-files"]) == 0
    assert json.loads(capsys.readouterr().out)["redone"] == 1
    assert np.isfinite(np.load(f, allow_pickle=False).astype(np.float32)).all()


# ------------------------------------------------------------------------------ option limits


@pytest.mark.parametrize("command", ["extract", "embed-video"])
@pytest.mark.parametrize(("option", "value", "want"), [
    ("--batch-size", str(MAX_BATCH + 1), f"--batch-size must be a whole number in [1, {MAX_BATCH}], got {MAX_BATCH + 1}"),
    ("--workers", "5000", "--workers must be a whole number in [0, 4096], got 5000"),
])
def test_out_of_range_refused_naming_the_option(command, option, value, want, tmp_path, capsys):
    assert main([command, str(tmp_path), "--out", str(tmp_path / "out"), option, value, "--no-download"]) == 2
    err = capsys.readouterr().err
    assert err == f"milnce: error: {want}\n"
    assert not (tmp_path / "out").exists()


def test_the_library_names_them_plainly():
    with pytest.raises(UsageError, match=r"^batch size must be a whole number"):
        resolve_batch_size(0, "cpu")
    with pytest.raises(UsageError, match=r"^workers must be a whole number"):
        resolve_workers(-1)
