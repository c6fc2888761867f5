"""Clip times are counted from the video stream's start, as the indexer's decoder counts them
(issue 25 item 5): MPEG-TS/PS files start at ~1.4 s, a video may start after its audio; the cut
(re-encoded and copied) holds exactly the frames the index puts in the span."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest

from milnce import cli
from milnce.index import Index
from milnce.video.cut import cut_clip
from milnce.video.decode import Video
from video_fixtures import frame_index, make_video

RATE = 10
GOP = 10  # a key frame every second


def _source(folder: Path, kind: str) -> Path:
    if kind == "mpegps":
        return make_video(folder / "v.mpg", n=40, rate=RATE, codec="mpeg2video", options={"g": str(GOP), "bf": "0"})
    opts = {"crf": "0", "preset": "ultrafast", "g": str(GOP), "keyint_min": str(GOP)}
    if kind == "late-mp4":  # the first frame at 0.5 s (an edit list): time 0 is that frame
        return make_video(folder / "late.mp4", rate=RATE, pts_ms=[500 + 100 * i for i in range(40)], options=opts)
    if kind == "mpegts":  # video from 1.4 s as ffmpeg's muxer writes it, the audio from 0
        return make_video(folder / "v.ts", rate=RATE, pts_ms=[1400 + 100 * i for i in range(40)], audio=True,
                          options=opts)
    return make_video(folder / f"v.{kind}", n=40, rate=RATE, options=opts)


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
    src = _source(tmp_path, kind)
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
    src = _source(tmp_path, kind)
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
    src = _source(tmp_path, "mpegts")
    cut_clip(str(src), 1.0, 3.0, tmp_path / "c.mp4", duration=4.0)
    with av.open(str(tmp_path / "c.mp4")) as c:
        a = c.streams.audio[0]
        assert abs(float(a.duration * a.time_base) - 2.0) <= 1024 / 16000 + 1e-3


def test_cli_clip_of_an_mpegts_video(tmp_path, capsys):
    src = _source(tmp_path, "mpegts")
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
