"""``milnce clip`` / ``milnce.video.cut``: exact re-encoded cuts, key-frame stream copies, refusals."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest

from milnce import cli
from milnce.index import Index
from milnce.video.cut import (
    ClipBusyError,
    ClipError,
    ClipLimits,
    SourceChangedError,
    check_span,
    clip_file_name,
    cut_clip,
)
from video_fixtures import frame_index, make_video, paint

RATE = 10  # frames per second of the fixture: one frame = 0.1 s
GOP = 20  # a key frame every 2 s
PIXEL_TOL = 3.0  # mean absolute difference (0-255) between a clip frame and its source frame (CRF 18)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("clipsrc")
    return make_video(d / "cook ing.mp4", n=60, rate=RATE, width=64, height=48, audio=True,
                      options={"crf": "0", "preset": "ultrafast", "g": str(GOP), "keyint_min": str(GOP)})


def _frames(path: Path) -> list[tuple[float, np.ndarray]]:
    with av.open(str(path)) as c:
        return [(float(f.pts * f.time_base), f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]


def _stream_seconds(path: Path, kind: str) -> float:
    with av.open(str(path)) as c:
        s = c.streams.video[0] if kind == "video" else c.streams.audio[0]
        return float(s.duration * s.time_base)


def _keyframe_times(path: Path) -> list[float]:
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return [float(p.pts * p.time_base) for p in c.demux(s) if p.pts is not None and p.is_keyframe]


def test_reencode_is_exact_with_audio(source, tmp_path):
    out = tmp_path / "a.mp4"
    res = cut_clip(str(source), 1.25, 3.0, out)
    assert not res.copy and res.audio and res.start == 1.25 and res.end == 3.0
    frames = _frames(out)
    # frames at 1.3 .. 2.9 s of the source: those inside [1.25, 3.0)
    assert [frame_index(f) for _, f in frames] == list(range(13, 30))
    assert abs(_stream_seconds(out, "video") - 1.75) <= 1 / RATE + 1e-6
    assert abs(len(frames) / RATE - 1.75) <= 1 / RATE
    # the audio stream is there and as long as the clip, to an AAC frame (1024 samples at 16 kHz)
    assert abs(_stream_seconds(out, "audio") - 1.75) <= 1024 / 16000 + 1e-3
    for (_, first), i in ((frames[0], 13), (frames[-1], 29)):  # the frames at the cut points
        ref = paint(i, 64, 48).astype(np.float64)
        assert np.abs(first.astype(np.float64) - ref).mean() <= PIXEL_TOL
    assert sorted(os.listdir(tmp_path)) == ["a.mp4"]  # nothing else written


def test_padding_and_clipping_to_the_video(source, tmp_path):
    res = cut_clip(str(source), 0.2, 5.9, tmp_path / "p.mkv", padding=0.5)
    assert (res.start, res.end) == (0.0, 6.0)
    assert [frame_index(f) for _, f in _frames(tmp_path / "p.mkv")] == list(range(60))


def test_copy_starts_at_the_previous_keyframe(source, tmp_path):
    out = tmp_path / "c.mp4"
    res = cut_clip(str(source), 2.5, 3.5, out, copy=True)
    keys = _keyframe_times(source)
    assert res.copy and res.start in keys and res.start <= 2.5
    assert res.start == max(k for k in keys if k <= 2.5)
    idx = [frame_index(f) for _, f in _frames(out)]
    assert idx[0] == round(res.start * RATE) and idx[-1] == 34 and idx == list(range(idx[0], 35))
    with av.open(str(out)) as c:
        assert c.streams.audio and next(c.demux(c.streams.video[0])).is_keyframe


@pytest.mark.parametrize(("start", "end", "why"), [
    (3.0, 2.0, "empty"), (7.0, 8.0, "outside"), (5.0, 9.0, "outside"), (-1.0, 2.0, "empty"),
    (float("nan"), 1.0, "finite")])
def test_span_outside_the_video_is_refused(source, tmp_path, start, end, why):
    with pytest.raises(ClipError, match=why):
        cut_clip(str(source), start, end, tmp_path / "x.mp4")
    assert not os.listdir(tmp_path)


def test_refusals_write_nothing(source, tmp_path):
    (tmp_path / "exists.mp4").write_bytes(b"keep")
    with pytest.raises(ClipError, match="exists"):
        cut_clip(str(source), 1, 2, tmp_path / "exists.mp4")
    assert (tmp_path / "exists.mp4").read_bytes() == b"keep"
    with pytest.raises(ClipError, match="must end in"):
        cut_clip(str(source), 1, 2, tmp_path / "x.avi")
    with pytest.raises(ClipError, match="no such folder"):
        cut_clip(str(source), 1, 2, tmp_path / "nope" / "x.mp4")
    (tmp_path / "junk.mp4").write_bytes(b"not a video")
    with pytest.raises(ClipError, match="cannot read"):
        cut_clip(str(tmp_path / "junk.mp4"), 0, 1, tmp_path / "y.mp4")
    assert sorted(os.listdir(tmp_path)) == ["exists.mp4", "junk.mp4"]
    copy = tmp_path / "src.mp4"
    copy.write_bytes(source.read_bytes())
    with open(copy, "rb") as handle:
        for src in (str(copy), handle):  # the source itself, even with overwrite, by path or by handle
            with pytest.raises(ClipError, match="source video itself"):
                cut_clip(src, 1, 2, copy, overwrite=True)
    assert copy.read_bytes() == source.read_bytes()


def test_limits_cap_length_and_concurrency(source, tmp_path):
    lim = ClipLimits(max_seconds=1.0, max_concurrent=1)
    with pytest.raises(ClipError, match="at most 1 s"):
        cut_clip(str(source), 1, 3, tmp_path / "l.mp4", limits=lim)
    with lim.slot(), pytest.raises(ClipBusyError):
        cut_clip(str(source), 1, 1.5, tmp_path / "l.mp4", limits=lim)
    assert cut_clip(str(source), 1, 1.5, tmp_path / "l.mp4", limits=lim).frames == 5


def test_check_span_and_names():
    assert check_span(1, 2, 10, padding=5) == (0, 7)
    assert check_span(1, 10.005, 10) == (1, 10)
    name = clip_file_name("/x/../.hid den;rm -rf.mp4", 65.5, 80)
    assert name == "hid_den_rm_-rf_01m05.50s-01m20.00s.mp4" and os.sep not in name


# -- the command ---------------------------------------------------------------------------------


def _index_with(tmp_path: Path, video: Path) -> Path:
    ix = tmp_path / "ix"
    st = os.stat(video)
    emb = np.random.default_rng(0).standard_normal((3, 512)).astype(np.float32)
    idx = Index.create(ix, SimpleNamespace(weights_id="synthetic", info=None))
    idx.add_video(str(video), SimpleNamespace(embeddings=emb, starts=np.array([0.0, 1.6, 3.2]),
                                              ends=np.array([3.2, 4.8, 6.0]), duration=6.0),
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


def test_source_changed_error_is_a_clip_error():
    assert issubclass(SourceChangedError, ClipError)


def test_copy_with_b_frames_has_no_gap_and_reencode_without_audio(tmp_path):
    """B-frames (decode order differs from display order): the copy covers [key frame, END) with
    every frame, perhaps a few after END, none skipped; a silent source gives a silent clip."""
    src = make_video(tmp_path / "bf.mp4", n=60, rate=RATE, options={"crf": "10", "preset": "medium", "g": "20", "bf": "3"})
    with av.open(str(src)) as c:
        assert any(p.dts is not None and p.pts != p.dts for p in c.demux(c.streams.video[0]))  # really B-frames
    res = cut_clip(str(src), 2.55, 4.0, tmp_path / "c.mp4", copy=True)
    idx = [frame_index(f) for _, f in _frames(tmp_path / "c.mp4")]
    assert res.start in _keyframe_times(src) and res.start <= 2.55
    assert idx == list(range(idx[0], idx[-1] + 1)) and idx[0] == round(res.start * RATE) and idx[-1] >= 39
    assert idx[-1] <= 39 + 4  # at most the B-frame depth past END
    res = cut_clip(str(src), 2.55, 4.0, tmp_path / "r.mp4")
    assert not res.audio and [frame_index(f) for _, f in _frames(tmp_path / "r.mp4")] == list(range(26, 40))
    with av.open(str(tmp_path / "r.mp4")) as c:
        assert not c.streams.audio


@pytest.mark.parametrize("copy", [False, True])
def test_display_rotation_is_kept(tmp_path, copy):
    src = make_video(tmp_path / "rot.mp4", n=20, rate=RATE, rotation=90)
    cut_clip(str(src), 0.5, 1.5, tmp_path / "r.mp4", copy=copy)
    with av.open(str(tmp_path / "r.mp4")) as c:
        assert next(c.decode(video=0)).rotation == 90
