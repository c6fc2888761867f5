"""Independent re-implementation of the reference loaders, shelling out to ``ffmpeg``/``ffprobe``
as they did (their command lines rebuilt from their documented behaviour; no milnce code)."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np

HAVE_FFMPEG = shutil.which("ffmpeg") is not None and shutil.which("ffprobe") is not None
WHY_NO_FFMPEG = "no ffmpeg/ffprobe binary on PATH: the reference loaders shell out to it"


def probe_size(path: str) -> tuple[int, int]:
    """ffprobe's (height, width) of the first video stream (coded size, rotation ignored)."""
    out = subprocess.run(["ffprobe", "-v", "error", "-print_format", "json", "-show_streams", str(path)],
                         capture_output=True, check=True).stdout
    s = next(s for s in json.loads(out)["streams"] if s["codec_type"] == "video")
    return int(s["height"]), int(s["width"])


def _run(args: list[str], size: int) -> np.ndarray:
    out = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", *args, "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:"],
                         capture_output=True, check=True).stdout
    return np.frombuffer(out, np.uint8).reshape(-1, size, size, 3)


def extractor_frames(path: str, fps: int, size: int = 224) -> np.ndarray:
    """HowTo100M/MMPT/UniVL feature extractor: fps -> scale (short side ``size`` from the
    probed size) -> centre crop; all frames of the video, N x size x size x 3."""
    h, w = probe_size(path)
    if h >= w:
        height, width = int(h * size / w), size
    else:
        height, width = size, int(w * size / h)
    x, y = int((width - size) / 2.0), int((height - size) / 2.0)
    graph = f"[0]fps=fps={fps}[s0];[s0]scale={width}:{height}[s1];[s1]crop={size}:{size}:{x}:{y}[s2]"
    return _run(["-i", str(path), "-filter_complex", graph, "-map", "[s2]"], size)


def extractor_chunks(path: str, fps: int, size: int = 224) -> np.ndarray:
    """The extractor's frames zero-padded to a multiple of ``fps`` and cut into 1-s chunks."""
    v = extractor_frames(path, fps, size)
    n = -len(v) % fps
    if n:
        v = np.concatenate([v, np.zeros((n, size, size, 3), np.uint8)])
    return v.reshape(-1, fps, size, size, 3)


def eval_window(path: str, start: float, num_frames: int = 32, fps: int = 10, size: int = 224) -> np.ndarray:
    """MIL-NCE YouCook2/MSR-VTT loader: -ss start -t T/fps+0.1, fps, square centre crop, scale,
    first T frames zero-padded; T x size x size x 3."""
    graph = (f"[0]fps=fps={fps}[s0];[s0]crop=min(iw\\,ih):min(iw\\,ih):(iw - min(iw\\,ih))*0.5:"
             f"(ih - min(iw\\,ih))*0.5[s1];[s1]scale={size}:{size}[s2]")
    v = _run(["-ss", f"{start}", "-t", f"{num_frames / fps + 0.1}", "-i", str(path), "-filter_complex", graph,
              "-map", "[s2]"], size)
    out = np.zeros((num_frames, size, size, 3), np.uint8)
    out[: min(len(v), num_frames)] = v[:num_frames]
    return out
