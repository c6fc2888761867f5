"""``milnce clip`` end to end (``milnce.commands.clip``): the CLI run through ``main(argv)`` or a subprocess."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest

from milnce import cli
from milnce.cli import main
from milnce.index import Index
from video_fixtures import cut_source_video, frame_index, make_video, write_codec_video


def test_clip_refusal_names_overwrite(tmp_path, capsys):
    video = make_video(tmp_path / "v.mp4", n=20, rate=10)
    st = os.stat(video)
    ix = tmp_path / "ix"
    idx = Index.create(ix, SimpleNamespace(weights_id="synthetic", info=None))
    idx.add_video(str(video), SimpleNamespace(embeddings=np.ones((1, 512), np.float32), starts=np.array([0.0]),
                                              ends=np.array([2.0]), duration=2.0),
                  size=st.st_size, mtime=st.st_mtime, content_hash="h")
    idx.close()
    existing = tmp_path / "clip.mp4"
    existing.write_bytes(b"keep me")
    assert cli.main(["clip", "--index", str(ix), "1@0-1", "--out", str(existing)]) == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and err.count("\n") == 1
    assert existing.read_bytes() == b"keep me"

RATE = 10  # frames per second of the fixture: one frame = 0.1 s
GOP = 20  # a key frame every 2 s


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("clipsrc")
    return make_video(d / "cook ing.mp4", n=60, rate=RATE, width=64, height=48, audio=True,
                      options={"crf": "0", "preset": "ultrafast", "g": str(GOP), "keyint_min": str(GOP)})


# -- the command ---------------------------------------------------------------------------------


def _index_with(tmp_path: Path, video: Path, duration: float | None = None, roots: list[Path] | None = None) -> Path:
    """An index (no model) holding ``video``: three windows over 6 s, or the two halves of ``duration``."""
    ix = tmp_path / "ix"
    st = os.stat(video)
    if duration is None:
        starts, ends, duration = np.array([0.0, 1.6, 3.2]), np.array([3.2, 4.8, 6.0]), 6.0
    else:
        starts, ends = np.array([0.0, duration / 2]), np.array([duration / 2, duration])
    emb = np.random.default_rng(0).standard_normal((len(starts), 512)).astype(np.float32)
    idx = Index.create(ix, SimpleNamespace(weights_id="synthetic", info=None),
                       **({"roots": [str(r) for r in roots]} if roots else {}))
    idx.add_video(str(video), SimpleNamespace(embeddings=emb, starts=starts, ends=ends, duration=duration),
                  size=st.st_size, mtime=st.st_mtime, content_hash="h")
    idx.close()
    return ix


def test_cli_clip_by_id_and_path(source, tmp_path, capsys, monkeypatch):
    video = tmp_path / "v.mp4"
    video.write_bytes(source.read_bytes())
    ix = _index_with(tmp_path, video)
    outdir = tmp_path / "out"
    outdir.mkdir()
    assert cli.main(["clip", "--index", str(ix), "1@1:00-0:02", "--out", str(outdir)]) == 2  # START > END
    assert "empty" in capsys.readouterr().err
    assert cli.main(["clip", "--index", str(ix), "1@1-2", "--out", str(outdir)]) == 0
    assert os.listdir(outdir) == ["v_00m01.00s-00m02.00s.mp4"]
    assert cli.main(["clip", "--index", str(ix), f"{video}@0:01.5-0:03", "--out", str(outdir / "b.mp4"), "--copy"]) == 0
    assert "copied from the key frame at 0.00 s" in capsys.readouterr().out
    monkeypatch.chdir(outdir)
    assert cli.main(["clip", "--index", str(ix), "1@2-3", "--padding", "0.5"]) == 0
    assert "v_00m01.50s-00m03.50s.mp4" in os.listdir(outdir)


@pytest.mark.parametrize("attack", ["modified", "removed", "symlink", "fifo", "unknown", "badspec"])
def test_cli_clip_refuses_changed_or_unknown_sources(source, tmp_path, capsys, attack):
    video = tmp_path / "v.mp4"
    video.write_bytes(source.read_bytes())
    ix = _index_with(tmp_path, video)
    spec = "1@1-2"
    if attack == "modified":
        with open(video, "ab") as f:
            f.write(b"\0")
    elif attack == "removed":
        video.unlink()
    elif attack == "symlink":  # same content behind a link: still refused (no following)
        (tmp_path / "real.mp4").write_bytes(video.read_bytes())
        st = os.stat(video)
        video.unlink()
        video.symlink_to(tmp_path / "real.mp4")
        os.utime(tmp_path / "real.mp4", ns=(st.st_atime_ns, st.st_mtime_ns))
    elif attack == "fifo":
        video.unlink()
        os.mkfifo(video)
    elif attack == "unknown":
        spec = f"{tmp_path / 'other.mp4'}@1-2"
    else:
        spec = "1@abc-2"
    out = tmp_path / "out.mp4"
    assert cli.main(["clip", "--index", str(ix), spec, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("milnce: error:") and len(err.strip().splitlines()) == 1
    assert not out.exists()
    if attack in ("modified", "removed", "symlink", "fifo"):
        assert "re-run milnce index" in err or "regular file" in err


def test_wrote_line_shows_a_hostile_name_printably(tmp_path, capsys):
    folder = tmp_path / "v"
    folder.mkdir()
    video = make_video(folder / "a\x1b[31mRED\nmilnce: error: forged.mp4", n=20)
    ix = _index_with(tmp_path, video, 2.0)
    out = tmp_path / "o\x1b[0m\nx.mp4"
    assert cli.main(["clip", "--index", str(ix), "1@0.5-1.5", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "\x1b" not in printed and printed.count("\n") == 1 and "\\x1b[31mRED\\x0amilnce" in printed
    assert out.exists()


def test_a_parent_folder_swapped_for_a_link_out_of_the_roots_is_refused(tmp_path, capsys):
    root = tmp_path / "videos"
    (root / "sub").mkdir(parents=True)
    video = make_video(root / "sub" / "a.mp4", n=20)
    ix = _index_with(tmp_path, video, 2.0, roots=[root])
    elsewhere = tmp_path / "elsewhere"
    (root / "sub").rename(elsewhere)  # the same file, now outside the roots...
    os.symlink(elsewhere, root / "sub")  # ...behind a link where its folder was
    out = tmp_path / "o.mp4"
    assert cli.main(["clip", "--index", str(ix), "1@0.5-1.5", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "symbolic link" in err and str(video) in err
    assert not out.exists()


def _sources(tmp_path: Path) -> dict[str, Path]:
    got = {"flv1": write_codec_video(tmp_path / "f.flv", "flv"), "gif": write_codec_video(tmp_path / "g.gif", "gif"),
           "rawvideo": write_codec_video(tmp_path / "r.nut", "rawvideo"),
           "pcm_mulaw": write_codec_video(tmp_path / "m.mov", "mpeg4", "pcm_mulaw")}
    if shutil.which("ffmpeg"):
        theora = tmp_path / "t.ogv"
        r = subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i",
                            "testsrc=size=64x48:rate=10:duration=2", "-c:v", "libtheora", str(theora)],
                           capture_output=True, timeout=60)
        if r.returncode == 0:
            got["theora"] = theora
    return got


@pytest.mark.parametrize("ext", [".mp4", ".mkv"])
def test_copy_of_codecs_the_container_cannot_hold_is_one_line_suggesting_reencoding(tmp_path, capsys, ext):
    for kind, src in _sources(tmp_path).items():
        work = tmp_path / kind
        work.mkdir()
        ix = _index_with(work, src, 2.0)
        out = work / f"o{ext}"
        code = cli.main(["clip", "--index", str(ix), "1@0.5-1.5", "--copy", "--out", str(out)])
        err = capsys.readouterr().err
        if code == 0:  # this container can hold it after all (checked: a clip that decodes)
            with av.open(str(out)) as c:
                assert sum(1 for _ in c.decode(video=0)) > 0, kind
            continue
        assert code == 2 and len(err.strip().splitlines()) == 1, (kind, err)
        assert "leave out --copy" in err and str(src) in err and "/proc/self/fd" not in err, (kind, err)
        assert not out.exists() and not [n for n in os.listdir(work) if n.endswith(".tmp")]
        if kind != "pcm_mulaw" or ext == ".mp4":
            assert cli.main(["clip", "--index", str(ix), "1@0.5-1.5", "--out", str(out)]) == 0, kind  # re-encoding works
            capsys.readouterr()


@pytest.mark.slow
def test_sigterm_during_clip_leaves_no_temporary_file(tmp_path):
    video = make_video(tmp_path / "v.mp4", n=40)
    ix = _index_with(tmp_path, video, 4.0)
    out = tmp_path / "out" / "c.mp4"
    out.parent.mkdir()
    script = textwrap.dedent("""
        import sys, time
        import milnce.video.cut as cut
        slow = cut._encode_video
        def encode(*a, **k):
            time.sleep(0.2)  # a long cut
            return slow(*a, **k)
        cut._encode_video = encode
        from milnce import cli
        sys.exit(cli.main(sys.argv[1:]))
    """)
    import milnce  # the sources under test, in the child too

    src = os.path.dirname(os.path.dirname(os.path.abspath(milnce.__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", script, "clip", "--index", str(ix), "1@0-4", "--out", str(out)],
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 60
        while not [n for n in os.listdir(out.parent) if n.endswith(".tmp")]:
            assert time.monotonic() < deadline and proc.poll() is None, "the cut never started"
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0 and "Traceback" not in err
    assert os.listdir(out.parent) == []


def _clip_frames(path: Path) -> list[tuple[float, int]]:
    with av.open(str(path)) as c:
        return [(float(f.pts * f.time_base), frame_index(f.to_ndarray(format="rgb24"))) for f in c.decode(video=0)]


def test_cli_clip_of_an_mpegts_video(tmp_path, capsys):
    src = cut_source_video(tmp_path, "mpegts")
    st = os.stat(src)
    emb = np.random.default_rng(0).standard_normal((2, 512)).astype(np.float32)
    idx = Index.create(tmp_path / "ix", SimpleNamespace(weights_id="synthetic", info=None))
    idx.add_video(str(src), SimpleNamespace(embeddings=emb, starts=np.array([0.0, 2.0]), ends=np.array([2.0, 4.0]),
                                            duration=4.0), size=st.st_size, mtime=st.st_mtime, content_hash="h")
    idx.close()
    assert cli.main(["clip", "--index", str(tmp_path / "ix"), "1@2-3", "--out", str(tmp_path / "o.mp4")]) == 0
    assert "1.00 s (10 frames, with audio)" in capsys.readouterr().out
    assert [i for _, i in _clip_frames(tmp_path / "o.mp4")] == list(range(20, 30))
    assert cli.main(["clip", "--index", str(tmp_path / "ix"), "1@0.5-1.5", "--copy", "--out", str(tmp_path / "k.mp4")]) == 0
    assert "copied from the key frame at 0.00 s" in capsys.readouterr().out


@pytest.mark.parametrize("span", ["²@1-2", "2@1_0-3", "2@0:99-1:40", "2@\u0661-3"])
def test_clip_cli_one_line(tmp_path, capsys, span):
    assert main(["clip", "--index", str(tmp_path / "ix"), span]) == 2
    err = capsys.readouterr().err
    assert err.startswith("milnce: error:") and err.count("\n") == 1 and "Traceback" not in err
