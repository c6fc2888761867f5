"""``milnce.video.cut``: Cutting a span out of a video into a new file (``milnce clip``)."""

from __future__ import annotations

import os
from pathlib import Path

import av
import numpy as np
import pytest

from milnce.video.cut import (
    ClipBusyError,
    ClipError,
    ClipLimits,
    SourceChangedError,
    check_span,
    clip_file_name,
    cut_clip,
)
from milnce.video.decode import Video
from video_fixtures import cut_source_video, frame_index, make_video, mux_painted_frames, paint, write_codec_video

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


def test_odd_sources_are_cut_not_crashed(tmp_path):
    """192 kHz PCM audio (resampled for AAC), 8 kHz mu-law, a 1 pixel wide video (stretched to 2)."""

    pcm = tmp_path / "pcm.mkv"
    with av.open(str(pcm), "w") as out:
        s = out.add_stream("mpeg4", rate=10)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        a = out.add_stream("pcm_s16le", rate=192000, layout="mono")
        mux_painted_frames(out, s, 20)
        for k in range(20):
            af = av.AudioFrame.from_ndarray(np.zeros((1, 19200), np.int16), format="s16", layout="mono")
            af.sample_rate, af.pts = 192000, k * 19200
            for p in a.encode(af):
                out.mux(p)
    res = cut_clip(str(pcm), 0.5, 1.5, tmp_path / "p.mp4")
    assert res.audio and res.frames == 10
    with av.open(str(tmp_path / "p.mp4")) as c:
        assert c.streams.audio[0].sample_rate == 48000
    mulaw = write_codec_video(tmp_path / "m.mov", "mpeg4", "pcm_mulaw")
    assert cut_clip(str(mulaw), 0.5, 1.5, tmp_path / "m.mp4").audio
    thin = make_video(tmp_path / "thin.nut", n=20, width=1, height=48, codec="rawvideo", pix_fmt="yuv444p", options={})
    res = cut_clip(str(thin), 0.5, 1.5, tmp_path / "t.mp4")
    with av.open(str(tmp_path / "t.mp4")) as c:
        assert res.frames == 10 and c.streams.video[0].width == 2


def _index_times(path: Path, keys: bool = False) -> list[float]:
    """Frame times (of the key frames) as the indexer's decoder reports them."""
    v = Video(str(path), threads=1)
    try:
        return [t for t, f in v.frames() if f.key_frame or not keys]
    finally:
        v.close()


def _clip_frames(path: Path) -> list[tuple[float, int]]:
    with av.open(str(path)) as c:
        return [(float(f.pts * f.time_base), frame_index(f.to_ndarray(format="rgb24"))) for f in c.decode(video=0)]


KINDS = ["mp4", "mkv", "mpegts", "mpegps", "late-mp4"]


@pytest.mark.parametrize("kind", KINDS)
def test_reencoded_clip_holds_the_indexed_span(tmp_path, kind):
    src = cut_source_video(tmp_path, kind)
    times = _index_times(src)
    assert len(times) == 40 and abs(times[0]) < 1e-9  # frame i at i / RATE from the video's start
    with av.open(str(src)) as c:
        late = float(c.streams.video[0].start_time * c.streams.video[0].time_base)
    assert (late > 0.4) == (kind in ("mpegts", "mpegps", "late-mp4"))  # really a late start
    res = cut_clip(str(src), 1.0, 2.0, tmp_path / "c.mp4", duration=4.0)  # the indexed duration
    got = _clip_frames(tmp_path / "c.mp4")
    assert res.frames == 10 and [i for _, i in got] == list(range(10, 20))
    assert abs(got[0][0]) < 1e-6 and abs(got[-1][0] - 0.9) < 1e-6
    # a span not on a frame: the frames shown inside it
    res = cut_clip(str(src), 0.45, 1.45, tmp_path / "d.mkv", duration=4.0)
    assert [i for _, i in _clip_frames(tmp_path / "d.mkv")] == list(range(5, 15)) and res.frames == 10


@pytest.mark.parametrize("kind", KINDS)
def test_copied_clip_starts_at_the_indexed_key_frame(tmp_path, kind):
    src = cut_source_video(tmp_path, kind)
    key = max(t for t in _index_times(src, keys=True) if t <= 2.5 + 1e-6)
    assert key > 1.5  # (MPEG-2 adds key frames where the picture changes)
    res = cut_clip(str(src), 2.5, 3.5, tmp_path / "c.mkv", copy=True, duration=4.0)  # as indexed
    assert res.copy and abs(res.start - key) < 1e-6  # the key frame at or before 2.5 s
    got = [i for _, i in _clip_frames(tmp_path / "c.mkv")]
    first = round(key * RATE)
    assert got[0] == first and got == list(range(first, first + len(got))) and 34 <= got[-1] <= 38
    key = max(t for t in _index_times(src, keys=True) if t <= 0.5 + 1e-6)
    res = cut_clip(str(src), 0.5, 1.5, tmp_path / "z.mkv", copy=True, duration=4.0)
    assert abs(res.start - key) < 1e-6 and [i for _, i in _clip_frames(tmp_path / "z.mkv")][0] == round(key * RATE)


def test_mpegts_audio_follows_the_video_origin(tmp_path):
    src = cut_source_video(tmp_path, "mpegts")
    cut_clip(str(src), 1.0, 3.0, tmp_path / "c.mp4", duration=4.0)
    with av.open(str(tmp_path / "c.mp4")) as c:
        a = c.streams.audio[0]
        assert abs(float(a.duration * a.time_base) - 2.0) <= 1024 / 16000 + 1e-3
