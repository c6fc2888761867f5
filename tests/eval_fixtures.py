"""Shared by the eval and train tests: small benchmark folders and runs (fixtures and helpers).

A pytest plugin (``tests/conftest.py``): its fixtures are seen by every test; its helpers and
constants are imported by name (``from eval_fixtures import FakeRunner``)."""

from __future__ import annotations

import errno
import hashlib
import importlib.util
import io
import json
import os
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from video_fixtures import make_video

TESTS = Path(__file__).resolve().parent
SRC = str(TESTS.parent / "src")

# A password-file line: a file behind a symlink must never be echoed into an error message.
SECRET = "root:$6$secrethash:19000:0:99999:7:::"


def erofs_open(monkeypatch: pytest.MonkeyPatch, under: Path) -> None:
    """Every atomic write below ``under`` fails as on a read-only file system."""
    import milnce.atomic

    real = open

    def fake_open(file, *args, **kwargs):  # type: ignore[no-untyped-def]
        if str(file).startswith(str(under)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(file))
        return real(file, *args, **kwargs)

    monkeypatch.setattr(milnce.atomic, "open", fake_open, raising=False)


# ============================================================================== eval

# A small protocol: 8 frames of 32 px at 10 fps, 4 windows a clip (``EvalSettings(**SMALL)``).
SMALL = {"num_frames": 8, "fps": 10.0, "size": 32, "num_windows": 4}


# ------------------------------------------------------------------------------ fakes


@dataclass
class FakeResult:
    key: object
    path: str
    starts: np.ndarray
    ends: np.ndarray
    embeddings: np.ndarray | None
    features: np.ndarray | None
    duration: float
    error: str | None = None


def window_vec(stem: str, start: float, dim: int = 512) -> np.ndarray:
    """The fake pipeline's embedding of the window of video ``stem`` starting at ``start``."""
    seed = int(hashlib.sha256(f"{stem}@{round(start * 1000)}".encode()).hexdigest()[:8], 16)
    return np.random.default_rng(seed).standard_normal(dim).astype(np.float32)


class FakeRunner:
    """Stands in for ``milnce.extract.run_jobs``; records the jobs, yields in reverse order."""

    def __init__(self, fail: tuple[str, ...] = (), features=None, drop_last: tuple[str, ...] = ()) -> None:
        self.jobs: list = []
        self.calls = 0
        self.fail = fail
        self.features = features  # stem -> 1024 vector (HMDB)
        self.drop_last = drop_last

    def __call__(self, model, jobs, settings, *, pad, features, progress, batch_size=None, workers=None, options=None):
        self.calls += 1
        self.settings, self.pad, self.want_features = settings, pad, features
        jobs = list(jobs)
        self.jobs += jobs
        for job in reversed(jobs):
            stem = Path(job.path).stem
            starts = np.asarray(job.starts, np.float64)
            if stem in self.fail:
                yield FakeResult(job.key, job.path, np.zeros(0), np.zeros(0), None, None, float("nan"), "cannot decode")
                continue
            if stem in self.drop_last:
                starts = starts[:-1]
            emb = np.stack([window_vec(stem, s) for s in starts]) if len(starts) else np.zeros((0, 512), np.float32)
            feat = (np.tile(self.features[stem], (len(starts), 1)) if self.features
                    else np.stack([window_vec(stem + "/f", s, 1024) for s in starts]))
            yield FakeResult(job.key, job.path, starts[::-1].copy(), starts[::-1] + settings.duration,
                             emb[::-1].copy(), feat[::-1].copy(), 9.0)


class NoRunner:
    def __call__(self, *a, **k):
        raise AssertionError("the pipeline must not run: everything should come from the cache")


class FakeModel:
    """Enough of ``MILNCE`` for ``evaluate``: a weights id, a tokenizer and a text tower."""

    def __init__(self, words: list[str], weights_id: str = "fake-1") -> None:
        from milnce.model import TextTower
        from milnce.text import Tokenizer

        torch.manual_seed(0)
        self.tokenizer = Tokenizer(words)
        self.net = type("Net", (), {})()
        self.net.text_module = TextTower(512, len(words) + 1, 300, tokenizer=self.tokenizer).eval()
        self.device = torch.device("cpu")
        self.weights_id = weights_id


# ------------------------------------------------------------------------------ miniature datasets


def yc_csv(path: Path, rows: list[tuple]) -> Path:
    """A YouCook2 annotation file of ``rows`` (end, start, task, text, video_id)."""
    path.write_text("end,start,task,text,video_id\n" + "".join(f"{e},{s},{t},{x},{v}\n" for e, s, t, x, v in rows))
    return path


YC_ROWS = [  # end, start, task, text, video_id
    (4, 0, 226, "cut tomato", "vidA"),
    (9, 5, 226, "add salt", "vidA"),
    (3, 1, 105, "pour water into bowl", "vidB"),
    (2, 2, 105, "open door", "vidB"),        # zero-length clip: all windows start at 2
    (6, 1, 105, "the man is cooking", "vidC"),
    (5, 0, 226, "playing guitar", "vidGone"),  # no such video
]


def youcook_folder(tmp_path: Path) -> tuple[Path, Path]:
    """(video root, annotations) of ``YC_ROWS``: placeholder files in the release's layouts."""
    root = tmp_path / "yc"
    (root / "validation" / "226").mkdir(parents=True)
    (root / "validation" / "105").mkdir(parents=True)
    (root / "validation" / "226" / "vidA.mp4").write_bytes(b"x")
    (root / "validation" / "105" / "vidB.webm").write_bytes(b"x")
    (root / "vidC.mkv").write_bytes(b"x")  # flat layout also found
    return root, yc_csv(tmp_path / "yc.csv", YC_ROWS)


@pytest.fixture()
def youcook(tmp_path):
    """``youcook_folder`` in the test's own folder (tests change its files)."""
    return youcook_folder(tmp_path)


@pytest.fixture(scope="session")
def msrvtt(tmp_path_factory):
    """(video root, annotations) of an MSR-VTT miniature: three real videos, one unreadable file,
    one missing video. Read only: runs write their caches and outputs elsewhere."""
    d = tmp_path_factory.mktemp("msrvtt")
    root = d / "videos"
    root.mkdir()
    make_video(root / "video1.mp4", n=30, rate=10, width=32, height=32)   # 3.0 s
    make_video(root / "video2.mp4", n=12, rate=10, width=32, height=32)   # 1.2 s
    make_video(root / "video3.mp4", n=8, rate=10, width=32, height=32)    # 0.8 s
    (root / "video4.mp4").write_bytes(b"not a video at all")
    csv = d / "m.csv"
    csv.write_text("key,vid_key,video_id,sentence\n" + "".join(
        f"ret{i},msr{i},video{i},{t}\n" for i, t in enumerate(
            ["a man is cooking", "the woman pours water", "a red square", "open the door", "a car drifting"], 1)))
    return root, csv


TASKS = {  # task id -> (title, steps)
    "16815": ("Jack Up a Car", ["cut tomato", "add salt", "pour water"]),
    "23521": ("Make Jello Shots", ["open door", "playing guitar"]),
}


def write_release(root: Path, videos_val: list[tuple[str, str]], annotations: dict[str, str],
                  related: bool = True) -> Path:
    """A CrossTask release folder in the distributed format (no header rows, blank-line blocks)."""
    rel = root / "crosstask_release"
    (rel / "annotations").mkdir(parents=True)
    blocks = "".join(f"{tid}\n{title}\nhttps://www.wikihow.com/{title.replace(' ', '-')}\n{len(steps)}\n"
                     f"{','.join(steps)}\n\n" for tid, (title, steps) in TASKS.items())
    (rel / "tasks_primary.txt").write_text(blocks)
    rows = "".join(f"{t},{v},https://www.youtube.com/watch?v={v}\n" for t, v in videos_val)
    if related:
        rows += "91537,relVid,https://www.youtube.com/watch?v=relVid\n"  # a related task: not evaluated
    (rel / "videos_val.csv").write_text(rows)
    (rel / "videos.csv").write_text(rows + "16815,trainVid,https://www.youtube.com/watch?v=trainVid\n")
    for name, text in annotations.items():
        (rel / "annotations" / f"{name}.csv").write_text(text)
    return rel


# ------------------------------------------------------------------------------ damaged cache entries


def good_entry() -> dict[str, np.ndarray]:
    """A valid eval cache entry (3 windows)."""
    rng = np.random.default_rng(0)
    return {"starts": np.arange(3.0), "video_embedding": rng.standard_normal((3, 512)).astype(np.float32),
            "mixed_5c": rng.standard_normal((3, 1024)).astype(np.float32), "duration": np.asarray(3.0)}


DAMAGE = ["truncated", "garbage", "zip garbage", "object arrays", "nan", "shapes", "string starts"]


def damage(kind: str, f: Path) -> None:
    """Damage the cache entry ``f`` in one of the ``DAMAGE`` ways."""
    if kind == "truncated":
        data = f.read_bytes()
        f.write_bytes(data[: len(data) // 2])
    elif kind == "garbage":
        f.write_bytes(os.urandom(300))
    elif kind == "zip garbage":
        f.write_bytes(b"PK\x03\x04" + os.urandom(300))
    elif kind == "object arrays":
        e = good_entry()
        with open(f, "wb") as fh:
            np.savez(fh, **{**e, "video_embedding": np.array([object()] * 3, dtype=object)})
    elif kind == "nan":
        e = good_entry()
        e["video_embedding"][1, 7] = np.nan
        with open(f, "wb") as fh:
            np.savez(fh, **e)
    elif kind == "shapes":
        e = good_entry()
        e["video_embedding"] = e["video_embedding"][0]
        with open(f, "wb") as fh:
            np.savez(fh, **e)
    elif kind == "string starts":
        e = good_entry()
        e["starts"] = np.array(["a", "b", "c"])
        with open(f, "wb") as fh:
            np.savez(fh, **e)


# ============================================================================== train

WEBDATASET_INSTALLED = importlib.util.find_spec("webdataset") is not None
needs_webdataset = pytest.mark.skipif(not WEBDATASET_INSTALLED, reason="webdataset (the train extra) is not installed")

# A tiny run: 8 frames of 32 px, 2 clips per step; settings shared by every run of the tests.
TINY = {
    "fps": 4, "num_frames": 8, "size": 32, "decode_size": 36, "min_time": 2.0, "num_candidates": 2,
    "batch_size": 2, "lr": 1e-3, "warmup_steps": 2, "schedule_steps": 6, "workers": 0,
    "eval_every": 0, "log_every": 1, "save_every": 3, "progress": False,
}

THREADS = 1  # identical weights need identical thread counts (float sums are ordered per thread)


@pytest.fixture(scope="session")
def synth(tmp_path_factory) -> Path:
    """A synthetic training set (6 + 2 held-out videos of 48 px). Read only: runs write elsewhere."""
    from milnce.train import make_synthetic

    return make_synthetic(tmp_path_factory.mktemp("synth") / "data", videos=6, val_videos=2, seed=1, size=48,
                          progress=False)


def tiny_config(tmp: Path, **extra) -> Path:
    """``tmp/tiny.json``: ``TINY`` with ``extra`` settings."""
    path = tmp / "tiny.json"
    path.write_text(json.dumps({**TINY, **extra}))
    return path


def run_train(data: Path, out: Path, cfg: Path, *more: str) -> int:
    """``milnce train`` in this process on ``THREADS`` threads; its exit status."""
    from milnce.cli import main

    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        return main(["train", "--data", str(data), "--out", str(out), "--config", str(cfg), *more])
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="session")
def straight(synth, tmp_path_factory) -> Path:
    """Six steps in one go (``TINY``). Read only: tests copy it before changing it."""
    tmp = tmp_path_factory.mktemp("straight")
    run = tmp / "run"
    assert run_train(synth, run, tiny_config(tmp), "--steps", "6") == 0
    return run


def final_state(run: Path) -> dict:
    """The run's latest training checkpoint."""
    from milnce.train.checkpoint import latest_checkpoint, load_training_checkpoint

    return load_training_checkpoint(latest_checkpoint(run))


def assert_same_weights(a: dict, b: dict) -> None:
    """Two training checkpoints hold the same weights and buffers, bit for bit."""
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), k


def assert_same_state(a: dict, b: dict) -> None:
    """Two training checkpoints of the same step, bit for bit (weights and optimiser)."""
    assert a["step"] == b["step"]
    assert_same_weights(a, b)
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        for k in sa[i]:
            assert torch.equal(sa[i][k], sb[i][k]), (i, k)


def assert_close_state(a: dict, b: dict, rel: float = 1e-10, buffers: bool = True) -> None:
    """Two training checkpoints of the same step within ``rel`` of each tensor's largest value."""
    assert a["step"] == b["step"]
    for k, v in a["state_dict"].items():
        if not buffers and ("running_" in k or "num_batches" in k):
            continue
        w = b["state_dict"][k]
        if v.is_floating_point():
            scale = max(float(v.abs().max()), 1e-30)
            assert float((v - w).abs().max()) <= rel * scale, k
        else:
            assert torch.equal(v, w), k
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        for k in sa[i]:
            x, y = sa[i][k].double(), sb[i][k].double()
            assert float((x - y).abs().max()) <= rel * max(float(x.abs().max()), 1e-30), (i, k)


def subprocess_env(threads: int = 1) -> dict[str, str]:
    """The environment of a child process: this tree's sources first, ``threads`` OpenMP threads."""
    return dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS=str(threads))


def milnce_cmd() -> list[str]:
    """The ``milnce`` command of this interpreter."""
    exe = Path(sys.executable).parent / "milnce"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "milnce.cli"]


def train_cmd(data: Path, out: Path, cfg: Path, *more: str) -> list[str]:
    """``run_train``'s command line for a child process (``subprocess_env(THREADS)``: the same threads)."""
    return [*milnce_cmd(), "train", "--data", str(data), "--out", str(out), "--config", str(cfg), *more]


def torchrun_milnce(nproc: int = 2) -> list[str]:
    """``torchrun --standalone --nproc_per_node NPROC milnce`` (arguments follow)."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    exe = Path(sys.executable).parent / "milnce"
    return launcher + (["--no-python", str(exe)] if exe.exists() else ["-m", "milnce.cli"])


AUDIT = TESTS / "fp64_audit.py"


def narrow_ops(stdout: str) -> list[dict]:
    """The JSON lines ``fp64_audit.py`` printed."""
    return [json.loads(x) for x in stdout.splitlines() if x.startswith("{")]


# ------------------------------------------------------------------------------ video2dataset shards

SHARD_FIXTURES = TESTS / "data" / "video2dataset"
SHARD_WORDS = ["add", "salt", "stir", "the", "soup", "cut", "onions", "serve", "a", "test", "pattern", "colour", "bars"]


def shard_after(path: Path, extra: dict[str, bytes]) -> Path:
    """The clipped fixture's records, after ``extra`` members (a hostile record first)."""
    with tarfile.open(SHARD_FIXTURES / "clipped" / "00000.tar") as src:
        members = [(m.name, src.extractfile(m).read()) for m in src.getmembers()]  # type: ignore[union-attr]
    with tarfile.open(path, "w") as tf:
        for name, data in [*extra.items(), *members]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path
