"""Shared by the index, search, extract and video-pipeline tests: small indexes and stores built
once (fixtures and helpers).

Every fixture here is session-scoped and read-only: a test that changes an index or a video folder
works on a copy (``shutil.copytree`` / ``copy_videos``)."""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from milnce.index import Index, build_index
from milnce.index.filters import VideoFilter, collection_root
from milnce.index.moments import iter_video_moments
from milnce.runoptions import RunOptions
from milnce.windows import WindowSettings
from video_fixtures import make_scene_video, make_video

# ----- stores of random windows (no model) -------------------------------------------------------

W = WindowSettings(fps=10.0, num_frames=8, size=32, stride=4)


def windows(n: int = 4, seed: int = 0, *, nan: bool = False) -> SimpleNamespace:
    """``n`` random windows 0.4 s apart (``nan``: one non-finite number in the second)."""
    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((n, 512)).astype(np.float32)
    starts = np.arange(n, dtype=np.float64) * 0.4
    if nan:
        emb[1, 3] = np.nan
    return SimpleNamespace(starts=starts, ends=starts + 0.8, embeddings=emb, duration=float(starts[-1] + 0.8))


def make_index(folder: Path, files: list[Path], roots: list[Path] | None = None) -> Index:
    """A writable index (weights "w1", no model) holding ``files`` as videos (random windows)."""
    idx = Index.create_for(folder, "w1", W, roots=roots if roots is not None else [])
    for i, f in enumerate(files):
        st = os.stat(f)
        idx.add_video(str(f), windows(seed=i), size=st.st_size, mtime=st.st_mtime, content_hash="")
    return idx


def feature_file(path: Path, source: Path, *, nan: bool = False) -> None:
    """A feature file (``milnce extract`` format) of ``windows()`` for the video file ``source``."""
    from milnce.extract.store import FORMAT, write_feature_file

    st = os.stat(source)
    w = windows(nan=nan)
    meta = {"format": FORMAT, "settings": {**W.to_dict(), "start": None, "end": None, "pad": "repeat"},
            "weights": "w1", "precision": "fp32",
            "source": {"path": str(source), "size": st.st_size, "mtime_ns": st.st_mtime_ns}}
    write_feature_file(str(path), {"video_embedding": w.embeddings, "start": w.starts, "end": w.ends,
                                   "duration": np.asarray(w.duration)}, meta)


def fake_model(weights_id: str = "synthetic"):
    return SimpleNamespace(weights_id=weights_id, info=None)


def fake_emb(n: int, rng: np.random.Generator, center: np.ndarray | None = None):
    """``n`` windows 1.6 s apart on a random walk around ``center`` (neighbours alike)."""
    c = rng.standard_normal(512).astype(np.float32) if center is None else center
    e = c + 0.3 * np.cumsum(rng.standard_normal((n, 512)).astype(np.float32) * 0.2, axis=0)
    starts = np.arange(n) * 1.6
    return SimpleNamespace(embeddings=e.astype(np.float32), starts=starts, ends=starts + 3.2, duration=n * 1.6 + 1.6)


def synthetic_index(directory: Path, videos: int = 20, windows: int = 50, seed: int = 0) -> Index:
    """A writable index of ``videos`` videos of ``windows`` windows each (``fake_emb``), paths that need not exist."""
    rng = np.random.default_rng(seed)
    idx = Index.create(directory, fake_model())
    for v in range(videos):
        idx.add_video(f"/nonexistent/v{v:03d}.mp4", fake_emb(windows, rng), size=1000 + v, mtime=1.0,
                      content_hash=f"h{v}")
    return idx


def key(m):
    """What a ranking compares of a moment."""
    return (m.video_id, m.start, m.end, m.score)


@pytest.fixture(scope="session")
def tiny_index(tmp_path_factory) -> Path:
    """One video (a 1-byte file) of four random windows, under a collection root."""
    d = tmp_path_factory.mktemp("tiny")
    f = d / "a.mp4"
    f.write_bytes(b"a")
    make_index(d / "ix", [f], roots=[d]).close()
    return d / "ix"


# ----- the filter store: ~21,000 windows, folders, names, mtimes, durations ----------------------

ROOT = "/media/footage"
FOLDERS = ["kitchen", "kitchen/2024", "garden", "garden/dogs", "a b"]
NAMES = ["cook", "dog", "walk", "Cat"]
EXTS = [".mp4", ".mkv"]
CENTRES = np.random.default_rng(99).standard_normal((12, 512)).astype(np.float32)


def clustered_windows(rng: np.random.Generator, n: int) -> SimpleNamespace:
    """``n`` windows 0.4 s apart, each near one of ``CENTRES``."""
    c = CENTRES[rng.integers(0, len(CENTRES), size=n)]
    emb = (c + 0.8 * rng.standard_normal((n, 512))).astype(np.float32)
    starts = np.arange(n, dtype=np.float64) * 0.4
    return SimpleNamespace(starts=starts, ends=starts + 0.8, embeddings=emb, duration=float(starts[-1] + 0.8))


@pytest.fixture(scope="session")
def big(tmp_path_factory) -> Path:
    """~21,000 windows in 40 videos with random folders, names, mtimes and durations (paths need
    not exist: the search path never opens them). Read-only: copy it to change it."""
    d = tmp_path_factory.mktemp("wire") / "ix"
    rng = np.random.default_rng(5)
    idx = Index.create_for(d, "w1", W, roots=[ROOT])
    for i in range(40):
        path = f"{ROOT}/{FOLDERS[i % len(FOLDERS)]}/{NAMES[rng.integers(4)]}{i}{EXTS[rng.integers(2)]}"
        mtime = float(1.70e9 + rng.integers(0, 10**7))
        idx.add_video(path, clustered_windows(rng, int(rng.integers(380, 680))), size=100 + i, mtime=mtime,
                      content_hash="")
    assert len(idx) > 20000  # the int8 screen runs from 20,000 rows on
    idx.close()
    return d


def reference(index: Index, q: np.ndarray, k: int, filt: VideoFilter | None = None,
              neg: np.ndarray | None = None, w: float = 0.5, offset: int = 0) -> list[tuple[int, float, float, float]]:
    """Brute force: every allowed video's float64 combined scores -> moments, ranked."""
    rows = index.rows()
    if filt is not None:
        f = filt.validated(collection_root(r.path for r in rows))
        rows = [r for r in rows if f.matches(r)]
    found = []
    for r in rows:
        starts, ends, emb = index.windows(r.id)
        x = emb.astype(np.float64)
        s = x @ q.astype(np.float64)
        if neg is not None:
            s = s - w * (x @ neg.astype(np.float64).T).max(axis=1)
        for a, b, _p, sc in iter_video_moments(s.astype(np.float32)):
            found.append((-sc, r.id, float(starts[a]), float(ends[b])))
    found.sort()
    return [(vid, a, b, -s) for s, vid, a, b in found[offset:offset + k]]


def same(got, ref) -> None:
    """``got`` (moments) is the ``reference`` ranking."""
    assert [(m.video_id, m.start, m.end) for m in got] == [(v, a, b) for v, a, b, _ in ref]
    np.testing.assert_allclose([m.score for m in got], [s for *_, s in ref], rtol=1e-4, atol=1e-3)


# ----- indexes of encoded videos (the conftest model) ---------------------------------------------

SMALL = {"fps": 10.0, "num_frames": 8, "size": 64, "stride": 4}
SMALL_ARGS = ["--fps", "10", "--num-frames", "8", "--size", "64", "--stride", "4"]
WINDOW_32 = {"fps": 10.0, "num_frames": 8, "size": 32, "stride": 4}  # a quarter of SMALL's pixels: where size is not tested


@pytest.fixture(scope="session")
def video_dir(tmp_path_factory) -> Path:
    """red.mp4, green.mp4, sub/blue.mp4 (``make_scene_video``), a broken .mp4 and a .txt. Read-only:
    ``copy_videos`` it to change it."""
    d = tmp_path_factory.mktemp("videos")
    make_scene_video(d / "red.mp4", 3.0, (220, 30, 30), 1)
    make_scene_video(d / "green.mp4", 4.0, (30, 200, 40), 2)
    make_scene_video(d / "sub" / "blue.mp4", 2.5, (30, 40, 220), 3)
    (d / "broken.mp4").write_bytes(b"this is not a video " * 20)
    (d / "notes.txt").write_text("not a video either")
    return d


def copy_videos(src: Path, dst: Path) -> Path:
    """The readable videos of ``src`` (subfolders flattened) copied into a new folder ``dst``."""
    dst.mkdir(parents=True)
    for p in src.rglob("*.mp4"):
        if p.name != "broken.mp4":
            shutil.copy2(p, dst / p.name)
    return dst


@pytest.fixture(scope="session")
def vids(tmp_path_factory) -> Path:
    """red.mp4, green.mp4, blue.mp4 in one folder (``make_scene_video``). Read-only."""
    d = tmp_path_factory.mktemp("trust_videos")
    make_scene_video(d / "red.mp4", 3.0, (220, 30, 30), 1)
    make_scene_video(d / "green.mp4", 4.0, (30, 200, 40), 2)
    make_scene_video(d / "blue.mp4", 2.5, (30, 40, 220), 3)
    return d


@pytest.fixture(scope="session")
def small_index(tmp_path_factory, vids, model) -> Path:
    """An index of ``vids`` with the ``WINDOW_32`` settings. Read-only: copy it to change it."""
    d = tmp_path_factory.mktemp("trust_ix") / "ix"
    build_index([vids], d, model, progress=False, window=WindowSettings.for_model(model, **WINDOW_32))
    return d


SCORE_QUERIES = ["a red square moving", "a blue ball", "open the door", "cut tomato", "pour water into bowl",
                 "the man is cooking", "green ball", "playing guitar", "car drifting", "waterfall"]


@pytest.fixture(scope="session")
def index_dir(tmp_path_factory, model) -> Path:
    """An index of two painted videos (one with a marker, one 48 x 48), windows of 8 frames at 32 px."""
    root = tmp_path_factory.mktemp("scores")
    v = root / "v"
    v.mkdir()
    make_video(v / "a.mp4", n=40, marker=True)
    make_video(v / "b.mp4", n=30, rate=10, width=48, height=48)
    build_index([v], root / "idx", model, progress=False, window=WindowSettings.for_model(model, num_frames=8, size=32),
                run=RunOptions(workers=0))
    return root / "idx"


# ----- the demo without a network -----------------------------------------------------------------


@contextmanager
def unreachable_weights(monkeypatch: pytest.MonkeyPatch, *, mirror: bool = False) -> Iterator[str]:
    """The published weights' URLs (and with ``mirror`` one mirror) on a 127.0.0.1 port bound but not
    listening: every download is refused. Yields that dead base URL."""
    import milnce.weights

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    dead = f"http://127.0.0.1:{sock.getsockname()[1]}/"
    info = milnce.weights.REGISTRY["s3d_howto100m"]
    mirrors = (f"{dead}b/w.pth {dead}b/v.npy",) if mirror else ()
    monkeypatch.setitem(milnce.weights.REGISTRY, "s3d_howto100m",
                        replace(info, url=dead + "a/s3d_howto100m.pth", vocab_url=dead + "a/s3d_dict.npy", mirrors=mirrors))
    try:
        yield dead
    finally:
        sock.close()


@pytest.fixture
def two_video_index(tmp_path, model) -> Path:
    """An index folder (conftest model's weights, 8 x 32 px windows every 0.8 s) of two tiny files,
    ``a.mp4`` and ``b.webm`` under ``tmp_path/videos`` (a root), three random windows each."""
    videos = tmp_path / "videos"
    videos.mkdir()
    ix = Index.create_for(tmp_path / "ix", model.weights_id, WindowSettings(fps=10.0, num_frames=8, size=32, stride=8),
                          roots=[videos])
    rng = np.random.default_rng(0)
    for name in ("a.mp4", "b.webm"):
        p = videos / name
        p.write_bytes(b"x")
        st = os.stat(p)
        starts = np.arange(3) * 0.8
        ix.add_video(str(p), SimpleNamespace(starts=starts, ends=starts + 0.8, duration=2.4,
                                             embeddings=rng.standard_normal((3, 512)).astype(np.float32)),
                     size=st.st_size, mtime=st.st_mtime, content_hash="")
    ix.close()
    return tmp_path / "ix"
