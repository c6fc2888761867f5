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
