"""``milnce.video.encode``: Whole-video encoding."""

from __future__ import annotations

import numpy as np
import pytest

from milnce.video import (
    VideoError,
    VideoWindows,
    clips_to_tensor,
    encode_video_file,
    read_clips,
)
from video_fixtures import (
    make_audio_only,
    make_empty_video,
    make_video,
)


@pytest.fixture(scope="module")
def vids(tmp_path_factory):
    d = tmp_path_factory.mktemp("videos")
    return {
        # 10 fps, 40 frames (4 s), a keyframe every 5 frames so seeking really jumps
        "cfr10": make_video(d / "cfr10.mp4", n=40, rate=10, options={"crf": "0", "preset": "ultrafast", "g": "5"}),
        "cfr25": make_video(d / "cfr25.mp4", n=30, rate=25),
        "vfr": make_video(d / "vfr.mkv", pts_ms=[0, 40, 50, 200, 210, 500, 730, 1000]),
        "short": make_video(d / "short.mp4", n=5, rate=10),
        "one": make_video(d / "one.mp4", n=1, rate=10),
    }


# ------------------------------------------------------------------------------ bad input


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    text = d / "notes.mp4"
    text.write_text("this is a text file, not a video\n" * 20)
    empty = d / "zero.mp4"
    empty.write_bytes(b"")
    return {
        "text": text,
        "zero_bytes": empty,
        "audio": make_audio_only(d / "speech.m4a"),
        "no_frames": make_empty_video(d / "noframes.mkv"),
        "missing": d / "missing.mp4",
        "dir": d,
    }


# ------------------------------------------------------------------------------ encoding


def test_encode_video_file_matches_clips(model, vids):
    res = encode_video_file(model, vids["cfr10"], num_frames=8, size=32, stride=8, batch_size=2, features=True)
    assert isinstance(res, VideoWindows)
    clips = list(read_clips(vids["cfr10"], num_frames=8, size=32, stride=8))
    assert len(res) == len(clips) == 5
    assert res.embeddings.dtype == np.float32 and res.embeddings.shape == (5, 512)
    assert res.features is not None and res.features.shape == (5, 1024) and res.features.dtype == np.float32
    assert res.starts.dtype == np.float64 and res.starts.tolist() == pytest.approx([0, 0.8, 1.6, 2.4, 3.2])
    assert res.ends.tolist() == pytest.approx([0.8, 1.6, 2.4, 3.2, 4.0])
    assert res.duration == pytest.approx(4.0)
    emb, feat = model.encode_video(clips_to_tensor(clips), features=True)
    np.testing.assert_allclose(res.embeddings, emb.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(res.features, feat.numpy(), rtol=1e-4, atol=1e-4)
    assert 0 <= res.stats["wait_share"] <= 1
    # the model method delegates; the model's info gives the defaults for what is not passed
    res2 = model.encode_video_file(vids["short"], num_frames=8, size=32)
    assert len(res2) == 1 and res2.features is None and res2.ends.tolist() == pytest.approx([0.5])


def test_encode_video_file_errors_do_not_hang(model, vids, bad, monkeypatch):
    with pytest.raises(VideoError, match="notes.mp4"):
        encode_video_file(model, bad["text"], num_frames=8, size=32)
    from milnce import video as vmod

    real_iter = vmod.ClipReader.__iter__

    def failing(self):
        for i, clip in enumerate(real_iter(self)):
            if i == 2:
                raise VideoError(f"{self.path}: boom")
            yield clip

    monkeypatch.setattr(vmod.ClipReader, "__iter__", failing)
    with pytest.raises(VideoError, match="boom"):
        encode_video_file(model, vids["cfr10"], num_frames=8, size=32, stride=4, batch_size=1)
