"""Hostile inputs of issue 15 outside the index/search/server area (those are in
``test_hostile_index.py``): malformed feature files for ``index --from-features``, damaged eval
cache entries, list files with a BOM, read-only outputs (EROFS injected: tests run as root), and
file names with ESC sequences or newlines in the extract/eval listings. Every attack is built in
``tmp_path``; each test failed before its fix."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import milnce.atomic
from milnce.cli import main
from milnce.windows import WindowSettings

W = WindowSettings(fps=10.0, num_frames=8, size=32, stride=4)
ESC_NAME = "evil\x1b[2J\x1b[31mred\nfailed: forged"  # clears the screen, colours, forges a line


def _erofs_open(monkeypatch: pytest.MonkeyPatch, under: Path) -> None:
    """Every atomic write below ``under`` fails as on a read-only file system."""
    real = open

    def fake_open(file, *args, **kwargs):  # type: ignore[no-untyped-def]
        if str(file).startswith(str(under)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(file))
        return real(file, *args, **kwargs)

    monkeypatch.setattr(milnce.atomic, "open", fake_open, raising=False)


def _one_error_line(err: str) -> None:
    assert "Traceback" not in err
    lines = [x for x in err.splitlines() if x.startswith("milnce: error:")]
    assert len(lines) == 1, err


# ----- gap 1: six (and more) malformed --from-features inputs ---------------------------------


def _features(folder: Path, name: str, video: Path, *, arrays: dict | None = None, **meta_over) -> Path:
    from milnce.extract.store import FORMAT, write_feature_file

    rng = np.random.default_rng(0)
    emb = rng.standard_normal((4, 512)).astype(np.float32)
    s = np.arange(4, dtype=np.float64) * 0.4
    st = os.stat(video)
    meta = {"format": FORMAT, "settings": {**W.to_dict(), "start": None, "end": None, "pad": "repeat"},
            "weights": "w1", "precision": "fp32",
            "source": {"path": str(video), "size": st.st_size, "mtime_ns": st.st_mtime_ns}}
    meta.update(meta_over)
    data = {"video_embedding": emb, "start": s, "end": s + 0.8, "duration": np.asarray(2.0)}
    for k, v in (arrays or {}).items():
        if v is None:
            del data[k]
        else:
            data[k] = v
    target = folder / name
    write_feature_file(str(target), data, meta)
    return target


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
    _features(alone, "bad.npz", vids / "a.mp4", arrays=arrays, **meta)
    _features(mixed, "bad.npz", vids / "a.mp4", arrays=arrays, **meta)
    _features(mixed, "good.npz", vids / "b.mp4")
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
    f = _features(tmp_path / "f", "a.npz", vids / "a.mp4")
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
def test_demo_lists_unreadable_videos_and_exits_1(tmp_path, wargs, capsys):
    """Issue 15: ``demo`` exited 0 with unreadable videos and listed none (``index`` lists them, exit 1)."""
    from video_fixtures import make_video

    vids = tmp_path / "v"
    vids.mkdir()
    make_video(vids / "ok.mp4", n=8, rate=10, width=32, height=32)
    (vids / "broken.mp4").write_bytes(b"not a video")
    rc = main(["demo", "--videos", str(vids), "--index", str(tmp_path / "ix"), "--quiet", "--fps", "10",
               "--num-frames", "8", "--size", "32", "--stride", "4", *wargs])
    err = capsys.readouterr().err
    assert rc == 1 and "failed:" in err and "broken.mp4" in err and "Traceback" not in err


def test_similarity_style_reader_rejects_crafted_meta(tmp_path):
    from milnce.extract import StoreError, read_feature_file, read_meta
    from milnce.video.result import EmbeddingsFileError, VideoWindows

    (tmp_path / "v.mp4").write_bytes(b"v")
    f = _features(tmp_path, "x.npz", tmp_path / "v.mp4", source=["/etc/passwd"])
    assert read_meta(str(f)) is None  # extract redoes it instead of failing on it
    with pytest.raises(StoreError, match=r"x\.npz.*meta\.source"):
        read_feature_file(f)
    with pytest.raises(EmbeddingsFileError, match=r"x\.npz.*meta\.source"):
        VideoWindows.load(f)


# ----- gap 2: damaged eval cache entries ---------------------------------------------------------


def _good_entry() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"starts": np.arange(3.0), "video_embedding": rng.standard_normal((3, 512)).astype(np.float32),
            "mixed_5c": rng.standard_normal((3, 1024)).astype(np.float32), "duration": np.asarray(3.0)}


def _damage(kind: str, f: Path) -> None:
    if kind == "truncated":
        data = f.read_bytes()
        f.write_bytes(data[: len(data) // 2])
    elif kind == "garbage":
        f.write_bytes(os.urandom(300))
    elif kind == "zip garbage":
        f.write_bytes(b"PK\x03\x04" + os.urandom(300))
    elif kind == "object arrays":
        e = _good_entry()
        with open(f, "wb") as fh:
            np.savez(fh, **{**e, "video_embedding": np.array([object()] * 3, dtype=object)})
    elif kind == "nan":
        e = _good_entry()
        e["video_embedding"][1, 7] = np.nan
        with open(f, "wb") as fh:
            np.savez(fh, **e)
    elif kind == "shapes":
        e = _good_entry()
        e["video_embedding"] = e["video_embedding"][0]
        with open(f, "wb") as fh:
            np.savez(fh, **e)
    elif kind == "string starts":
        e = _good_entry()
        e["starts"] = np.array(["a", "b", "c"])
        with open(f, "wb") as fh:
            np.savez(fh, **e)


DAMAGE = ["truncated", "garbage", "zip garbage", "object arrays", "nan", "shapes", "string starts"]


@pytest.mark.parametrize("kind", DAMAGE)
def test_damaged_eval_cache_entry_is_a_miss_with_a_log_line(tmp_path, caplog, kind):
    from milnce.eval import EmbeddingCache

    c = EmbeddingCache(tmp_path / "c")
    c.put("ab" * 32, _good_entry())
    assert c.get("ab" * 32) is not None
    _damage(kind, c._file("ab" * 32))
    with caplog.at_level(logging.WARNING, logger="milnce.eval"):
        assert c.get("ab" * 32) is None
    assert "recomputing" in caplog.text and c.damaged == 1
    bad = _good_entry()
    bad["mixed_5c"][0, 0] = np.inf
    c.put("cd" * 32, bad)  # never stored
    assert not c._file("cd" * 32).exists()


def test_damaged_eval_cache_is_recomputed_by_evaluate(tmp_path):
    from milnce.eval import EvalSettings, evaluate
    from tests.eval.test_run import YC_ROWS, FakeModel, FakeRunner, _yc_csv

    root = tmp_path / "yc"
    (root / "validation" / "226").mkdir(parents=True)
    (root / "validation" / "105").mkdir(parents=True)
    (root / "validation" / "226" / "vidA.mp4").write_bytes(b"x")
    (root / "validation" / "105" / "vidB.webm").write_bytes(b"x")
    (root / "vidC.mkv").write_bytes(b"x")
    csv = _yc_csv(tmp_path / "yc.csv", YC_ROWS)
    s = EvalSettings(num_frames=8, fps=10.0, size=32, num_windows=4)
    model = FakeModel(["cut"])
    first = evaluate(model, "youcook2", root, annotations=csv, settings=s, cache=tmp_path / "c", runner=FakeRunner())
    entries = sorted((tmp_path / "c").rglob("*.npz"))
    assert len(entries) == 3
    _damage("truncated", entries[0])
    with np.load(entries[1]) as z:  # a NaN in a cached embedding, the file otherwise whole
        e = {k: z[k] for k in z.files}
    e["video_embedding"][0, 0] = np.nan
    with open(entries[1], "wb") as fh:
        np.savez(fh, **e)
    _damage("object arrays", entries[2])
    r = FakeRunner()
    again = evaluate(model, "youcook2", root, annotations=csv, settings=s, cache=tmp_path / "c", runner=r)
    assert len(r.jobs) == 3 and not again.clips.unreadable
    np.testing.assert_array_equal(first.clips.mask, again.clips.mask)
    np.testing.assert_allclose(first.clips.video[first.clips.mask], again.clips.video[again.clips.mask])


# ----- gap 3: list files with a BOM -------------------------------------------------------------


def test_list_files_with_a_bom_are_accepted(tmp_path):
    from milnce.eval import load_benchmark
    from milnce.extract import collect_inputs

    for n in ("a.mp4", "b.mp4"):
        (tmp_path / n).write_bytes(b"x")
    (tmp_path / "list.csv").write_bytes(b"\xef\xbb\xbfvideo_path,label\na.mp4,1\nb.mp4,2\n")
    (tmp_path / "list.txt").write_bytes(b"\xef\xbb\xbfa.mp4\nb.mp4\n")
    for f in ("list.csv", "list.txt"):
        got = collect_inputs([tmp_path / f])
        assert [Path(i.path).name for i in got] == ["a.mp4", "b.mp4"] and all(i.size == 1 for i in got)
    (tmp_path / "m.csv").write_bytes(b"\xef\xbb\xbfkey,vid_key,video_id,sentence\nr1,m1,video1,a man\n")
    assert load_benchmark("msrvtt", tmp_path / "m.csv").items[0].video_id == "video1"


# ----- gap 4: read-only --out (EROFS injected) --------------------------------------------------


@pytest.fixture()
def msrvtt_tiny(tmp_path, monkeypatch, model):
    """An MSR-VTT miniature with the fake pipeline and the session model (nothing decoded)."""
    import milnce.commands.eval as eval_cmd
    from milnce.eval import run as run_mod
    from tests.eval.test_run import FakeRunner
    from video_fixtures import make_video

    root = tmp_path / "videos"
    root.mkdir()
    for i in (1, 2):
        make_video(root / f"video{i}.mp4", n=8, rate=10, width=32, height=32)
    csv = tmp_path / "m.csv"
    csv.write_text("key,vid_key,video_id,sentence\nret1,msr1,video1,a man\nret2,msr2,video2,the woman\n")
    runner = FakeRunner()
    monkeypatch.setattr(run_mod, "run_jobs", runner)
    monkeypatch.setattr(eval_cmd, "model_from_args", lambda args: model)
    runner.args = ["eval", "msrvtt", "--videos", str(root), "--annotations", str(csv), "--num-frames", "8",
                   "--size", "32", "--quiet", "--no-cache"]
    return runner


def test_read_only_eval_out_is_one_line(tmp_path, msrvtt_tiny, monkeypatch, capsys):
    out = tmp_path / "out"
    out.mkdir()
    _erofs_open(monkeypatch, out)
    assert main([*msrvtt_tiny.args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    _one_error_line(err)
    assert "cannot write" in err and "Read-only file system" in err
    assert not list(out.iterdir())  # no temporary file left
    # a folder that cannot even be created
    real_mkdir = Path.mkdir

    def mkdir(self, *a, **k):  # type: ignore[no-untyped-def]
        if str(self).startswith(str(tmp_path / "new")):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return real_mkdir(self, *a, **k)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    assert main([*msrvtt_tiny.args, "--out", str(tmp_path / "new" / "out")]) == 2
    err = capsys.readouterr().err
    _one_error_line(err)
    assert "Read-only file system" in err


def test_eval_out_folder_errors_are_milnce_errors(tmp_path, monkeypatch):
    from milnce.errors import MilnceError
    from milnce.eval.report import out_folder

    (tmp_path / "file").write_text("x")
    with pytest.raises(MilnceError, match="must be a folder"):  # crosstask's raised a plain NotADirectoryError
        out_folder(tmp_path / "file")

    def mkdir(self, *a, **k):  # type: ignore[no-untyped-def]
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))

    monkeypatch.setattr(Path, "mkdir", mkdir)
    with pytest.raises(MilnceError, match="cannot write"):
        out_folder(tmp_path / "ro")


def test_eval_cache_on_a_read_only_disk_goes_on(tmp_path, monkeypatch, caplog):
    from milnce.eval import EmbeddingCache

    _erofs_open(monkeypatch, tmp_path / "c")
    c = EmbeddingCache(tmp_path / "c")
    with caplog.at_level(logging.WARNING, logger="milnce.eval"):
        c.put("ab" * 32, _good_entry())
        c.put("cd" * 32, _good_entry())
    assert caplog.text.count("cannot write") == 1 and c.get("ab" * 32) is None


@pytest.mark.usefixtures("reuse_model")
def test_read_only_localize_plot_and_missing_matplotlib(tmp_path, wargs, monkeypatch, capsys):
    from video_fixtures import make_video

    video = make_video(tmp_path / "v.mp4", n=12, rate=10, width=48, height=32)
    args = ["localize", str(video), "red square", "--fps", "10", "--num-frames", "8", "--size", "32",
            "--stride", "4", "--quiet", *wargs]
    ro = tmp_path / "ro"
    ro.mkdir()
    _erofs_open(monkeypatch, ro)
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


def test_eval_listings_and_error_lines_escape_control_characters(tmp_path, msrvtt_tiny, capsys):
    vid = "vid\x1b[2J\x1b[31m\nfailed: forged"
    root = Path(msrvtt_tiny.args[msrvtt_tiny.args.index("--videos") + 1])
    csv = Path(msrvtt_tiny.args[msrvtt_tiny.args.index("--annotations") + 1])
    shutil.copy(root / "video1.mp4", root / f"{vid}.mp4")
    csv.write_text(csv.read_text() + f"ret3,msr3,\"{vid}\",a car\nret4,msr4,\"gone{vid}\",a dog\n")
    msrvtt_tiny.fail = (vid,)
    assert main(msrvtt_tiny.args) == 1
    cap = capsys.readouterr()
    _assert_escaped(cap.err)
    assert "\x1b" not in cap.out
    # an error line naming a path with control characters
    assert main(["eval", "msrvtt", "--videos", str(tmp_path / "no\x1b[2Jsuch"), "--no-download"]) == 2
    err = capsys.readouterr().err
    assert "\x1b" not in err and "no\\x1b[2Jsuch" in err
