"""Training data: captioned videos, clip sampling with random crop and flip, held-out pairs.

Two layouts are read:

- HowTo100M: a CSV ``video_id,video_path`` and one caption CSV ``start,end,text`` per video in
  ``captions/<video_id>.csv``. A data folder holds ``train.csv`` (or ``videos.csv``), optionally
  ``val.csv``, and ``captions/``. A training sample is one clip per video per epoch: a random
  caption, its K nearest captions (by time) as the positive bag, their span widened to
  ``min_time`` seconds, and a clip of ``num_frames`` at ``fps`` at a random place in that span.
- generic: a CSV ``video_path,start,end,text``; each row is a sample (its bag: the row's
  caption and the nearest other captions of the same video).

Samples are a pure function of ``(seed, global sample number)``: the epoch's order is a seeded
permutation and each sample draws from its own ``numpy`` generator, so a run restarted at step
``s`` sees exactly the data it would have seen, with any number of worker processes.
"""

from __future__ import annotations

import csv
import math
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import UsageError
from ..listfiles import open_list, read_csv_rows
from ..printable import show_path
from ..text import Tokenizer
from ..windows import WindowSettings

__all__ = ["CaptionedVideo", "DataSplit", "load_split", "TrainClips", "EvalClips",
           "StepBatchSampler", "eval_pairs", "worker_init"]

csv.field_size_limit(1 << 24)
_MAX_CSV_LINE = 1 << 24  # characters: a training CSV's caption fields may be long; still bounded


@dataclass(frozen=True)
class CaptionedVideo:
    """A video file and its timed captions (seconds)."""

    path: str
    starts: np.ndarray
    ends: np.ndarray
    texts: tuple[str, ...]


@dataclass(frozen=True)
class DataSplit:
    """Videos and the training anchors ``(video, caption)``; caption ``-1`` = a random one."""

    videos: tuple[CaptionedVideo, ...]
    anchors: np.ndarray  # N x 2 int64
    source: str


def _read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    try:
        with open_list(path, show_path(str(path))) as f:  # utf-8-sig: a BOM is dropped; bounded reads
            rows = list(read_csv_rows(f, show_path(str(path)), what="not a training CSV",
                                      max_row=_MAX_CSV_LINE))
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not a UTF-8 text CSV") from None
    if not rows:
        raise UsageError(f"{path}: empty CSV (expected a header line)")
    return [h.strip().lower() for h in rows[0]], [r for r in rows[1:] if r and any(c.strip() for c in r)]


def _column(header: list[str], name: str, path: Path) -> int:
    if name not in header:
        raise UsageError(f"{path}: missing column {name!r} (columns: {', '.join(header)})")
    return header.index(name)


def _time(value: str, path: Path, line: int) -> float:
    try:
        t = float(value)
    except ValueError:
        raise UsageError(f"{path}:{line}: time {value!r} is not a number") from None
    if not math.isfinite(t) or t < 0:
        raise UsageError(f"{path}:{line}: time {value!r} must be finite and >= 0")
    return t


def _resolve(base: Path, p: str) -> str:
    p = p.strip()
    return p if os.path.isabs(p) else str(base / p)


def _captions(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    header, rows = _read_csv(path)
    ci = [_column(header, c, path) for c in ("start", "end", "text")]
    starts, ends, texts = [], [], []
    for n, row in enumerate(rows, start=2):
        if len(row) <= max(ci):
            raise UsageError(f"{path}:{n}: expected columns start,end,text")
        s, e = _time(row[ci[0]], path, n), _time(row[ci[1]], path, n)
        if e < s:
            raise UsageError(f"{path}:{n}: end ({e:g}) is before start ({s:g})")
        if row[ci[2]].strip():
            starts.append(s)
            ends.append(e)
            texts.append(row[ci[2]].strip())
    return np.asarray(starts, np.float64), np.asarray(ends, np.float64), tuple(texts)


def load_split(path: str | os.PathLike[str], captions_dir: str | os.PathLike[str] | None = None) -> DataSplit:
    """Read a HowTo100M-layout list (``video_id,video_path``) or a generic ``video_path,start,end,text`` CSV."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"data file not found: {path}")
    header, rows = _read_csv(path)
    base = path.parent
    videos: list[CaptionedVideo] = []
    anchors: list[tuple[int, int]] = []
    if "video_id" in header:
        iv, ip = _column(header, "video_id", path), _column(header, "video_path", path)
        cdir = Path(captions_dir) if captions_dir is not None else base / "captions"
        if not cdir.is_dir():
            raise UsageError(f"{path}: caption folder {cdir} not found (expected captions/<video_id>.csv)")
        skipped = 0
        for n, row in enumerate(rows, start=2):
            if len(row) <= max(iv, ip):
                raise UsageError(f"{path}:{n}: expected columns video_id,video_path")
            cpath = cdir / f"{row[iv].strip()}.csv"
            if not cpath.is_file():
                raise UsageError(f"{path}:{n}: no caption file {cpath}")
            s, e, t = _captions(cpath)
            if not t:
                skipped += 1
                continue
            anchors.append((len(videos), -1))
            videos.append(CaptionedVideo(_resolve(base, row[ip]), s, e, t))
        if skipped:
            warnings.warn(f"{path}: {skipped} video(s) without captions skipped", stacklevel=2)
    elif {"video_path", "start", "end", "text"} <= set(header):
        ip, is_, ie, it = (_column(header, c, path) for c in ("video_path", "start", "end", "text"))
        grouped: dict[str, list[tuple[float, float, str]]] = {}
        for n, row in enumerate(rows, start=2):
            if len(row) <= max(ip, is_, ie, it):
                raise UsageError(f"{path}:{n}: expected columns video_path,start,end,text")
            t0, t1 = _time(row[is_], path, n), _time(row[ie], path, n)
            if t1 < t0:
                raise UsageError(f"{path}:{n}: end ({t1:g}) is before start ({t0:g})")
            if row[it].strip():
                grouped.setdefault(_resolve(base, row[ip]), []).append((t0, t1, row[it].strip()))
        for vpath, caps in grouped.items():
            caps.sort(key=lambda c: (c[0], c[1]))
            for j in range(len(caps)):
                anchors.append((len(videos), j))
            videos.append(CaptionedVideo(vpath, np.array([c[0] for c in caps]), np.array([c[1] for c in caps]),
                                         tuple(c[2] for c in caps)))
    else:
        raise UsageError(
            f"{path}: unknown CSV layout (columns: {', '.join(header)}); expected video_id,video_path "
            "(HowTo100M layout with captions/<video_id>.csv) or video_path,start,end,text"
        )
    if not videos:
        raise UsageError(f"{path}: no captioned videos")
    return DataSplit(tuple(videos), np.asarray(anchors, np.int64).reshape(-1, 2), str(path))


def nearest_captions(video: CaptionedVideo, index: int, k: int) -> list[int]:
    """``index`` and the ``k - 1`` captions closest to it in time (ties: the earlier one)."""
    centres = (video.starts + video.ends) / 2
    order = np.lexsort((np.arange(len(centres)), np.abs(centres - centres[index])))
    picked = [index] + [int(j) for j in order if j != index][: k - 1]
    while len(picked) < k:  # too few captions: repeat them
        picked.append(picked[len(picked) % max(1, len(picked))])
    return picked


def widen(start: float, end: float, min_time: float) -> tuple[float, float]:
    """``[start, end]`` widened around its middle to at least ``min_time`` seconds (never before 0)."""
    if end - start < min_time:
        mid = (start + end) / 2
        start = max(0.0, mid - min_time / 2)
        end = start + min_time
    return start, end


MAX_TRIES = 16  # replacements tried for an unreadable sample before the step is given up


def blank_sample(window: WindowSettings, tokenizer: Tokenizer, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A placeholder of the right shapes for a sample that could not be read (never trained on)."""
    return (torch.zeros(3, window.num_frames, window.size, window.size, dtype=torch.uint8),
            tokenizer([""] * k))


def worker_init(_: int) -> None:
    """DataLoader workers decode with one thread each (the trainer owns the cores)."""
    torch.set_num_threads(1)


def random_crop(frames: torch.Tensor, decoded: int, size: int, hflip: bool, rng: np.random.Generator) -> torch.Tensor:
    """A random ``size`` x ``size`` crop of ``frames`` (C x T x ``decoded`` x ``decoded``), flipped
    left-right with probability 1/2 when ``hflip``: the training augmentation of both data layouts."""
    y, x = (int(v) for v in rng.integers(0, decoded - size + 1, size=2))
    clip = frames[:, :, y:y + size, x:x + size]
    if hflip and rng.random() < 0.5:
        clip = clip.flip(-1)
    return clip.contiguous()


class TrainClips(torch.utils.data.Dataset):
    """Item ``g`` (a global sample number) -> ``(uint8 3 x T x S x S clip, int64 K x words ids)``."""

    def __init__(self, split: DataSplit, tokenizer: Tokenizer, window: WindowSettings, *, seed: int,
                 decode_size: int, min_time: float, num_candidates: int, hflip: bool) -> None:
        self.split = split
        self.tokenizer = tokenizer
        self.window = window
        self.seed = int(seed)
        self.decode_size = int(decode_size)
        self.min_time = float(min_time)
        self.k = int(num_candidates)
        self.hflip = bool(hflip)
        self._perm: tuple[int, np.ndarray] | None = None
        self._warned = False

    def __len__(self) -> int:  # samples per epoch
        return len(self.split.anchors)

    def order(self, epoch: int) -> np.ndarray:
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, np.random.default_rng([self.seed, 1, epoch]).permutation(len(self)))
        return self._perm[1]

    def __getitem__(self, g: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Sample ``g``: ``(clip, ids, info)``; an unreadable video is replaced by another sample
        drawn from ``g``'s own generator, and ``info`` counts it (``bad``, ``notes``; ``failed``
        when no replacement could be read: the trainer then stops)."""
        from ..video import VideoError

        epoch, pos = divmod(int(g), len(self))
        rng = np.random.default_rng([self.seed, 2, int(g)])
        anchor = int(self.order(epoch)[pos])
        notes: list[str] = []
        for _ in range(MAX_TRIES):
            try:
                clip, ids = self._sample(anchor, rng)
                return clip, ids, {"bad": len(notes), "failed": 0, "notes": "\n".join(notes)}
            except Exception as exc:  # noqa: BLE001 - an unreadable file or span (whatever the decoder raised): use another sample, count it
                video = self.split.videos[int(self.split.anchors[anchor][0])]
                text = (str(exc).splitlines() or [""])[0][:300]
                notes.append(f"{video.path}: {text if isinstance(exc, VideoError) else f'{type(exc).__name__}: {text}'}")
                anchor = int(rng.integers(len(self)))
        return (*blank_sample(self.window, self.tokenizer, self.k),
                {"bad": len(notes), "failed": 1, "notes": "\n".join(notes)})

    def _sample(self, anchor: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        from ..video import read_clip

        vi, ci = (int(x) for x in self.split.anchors[anchor])
        video = self.split.videos[vi]
        if ci < 0:
            ci = int(rng.integers(len(video.texts)))
        bag = nearest_captions(video, ci, self.k)
        start, end = widen(float(video.starts[bag].min()), float(video.ends[bag].max()), self.min_time)
        w = self.window
        duration = w.num_frames / w.fps
        t0 = float(rng.uniform(start, max(start, end - duration)))
        frames = read_clip(video.path, t0, t0 + duration, num_windows=1, fps=w.fps, num_frames=w.num_frames,
                           size=self.decode_size, crop="center", threads=1).frames[0]
        ids = self.tokenizer([video.texts[j] for j in bag])
        return random_crop(frames, self.decode_size, w.size, self.hflip, rng), ids


@dataclass(frozen=True)
class EvalPair:
    path: str
    start: float
    end: float
    text: str


def eval_pairs(split: DataSplit, limit: int) -> list[EvalPair]:
    """One (clip, caption) pair per caption of the held-out split, in file order, skipping
    captions that repeat an earlier text (identical queries cannot tell their videos apart)."""
    seen: set[str] = set()
    out: list[EvalPair] = []
    for v in split.videos:
        for s, e, t in zip(v.starts, v.ends, v.texts):
            key = " ".join(Tokenizer.split(t))
            if key in seen:
                continue
            seen.add(key)
            out.append(EvalPair(v.path, float(s), float(e), t))
            if len(out) >= limit:
                return out
    return out


class EvalClips(torch.utils.data.Dataset):
    """Held-out clip ``i``: centred in its caption's span (widened to ``min_time``), decoded at
    ``decode_size`` and centre-cropped to ``size`` (the training scale), no flip."""

    def __init__(self, pairs: Sequence[EvalPair], window: WindowSettings, decode_size: int, min_time: float) -> None:
        self.pairs = list(pairs)
        self.window = window
        self.decode_size = int(decode_size)
        self.min_time = float(min_time)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> torch.Tensor:
        from ..video import read_clip

        p = self.pairs[i]
        w = self.window
        duration = w.num_frames / w.fps
        start, end = widen(p.start, p.end, self.min_time)
        t0 = max(0.0, (start + end) / 2 - duration / 2)
        frames = read_clip(p.path, t0, t0 + duration, num_windows=1, fps=w.fps, num_frames=w.num_frames,
                           size=self.decode_size, crop="center", threads=1).frames[0]
        o = (self.decode_size - w.size) // 2
        return frames[:, :, o:o + w.size, o:o + w.size].contiguous()


class StepBatchSampler(torch.utils.data.Sampler[list[int]]):
    """This rank's micro-batches of global sample numbers, from ``start_step`` to ``steps``.

    Optimiser step ``s``, micro-step ``m`` covers samples ``(s*A + m) * B*W ...`` of which rank
    ``r`` takes ``[r*B, (r+1)*B)``: the same clips, in the same order, as one process
    training on the global batch.
    """

    def __init__(self, start_step: int, steps: int, micro_batch: int, grad_accum: int, rank: int, world: int) -> None:
        self.start, self.steps = start_step, steps
        self.b, self.a, self.rank, self.world = micro_batch, grad_accum, rank, world

    def __len__(self) -> int:
        return max(0, self.steps - self.start) * self.a

    def __iter__(self) -> Iterator[list[int]]:
        per_micro = self.b * self.world
        for step in range(self.start, self.steps):
            for m in range(self.a):
                base = (step * self.a + m) * per_micro + self.rank * self.b
                yield list(range(base, base + self.b))
