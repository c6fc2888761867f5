"""Streamed training data: webdataset tar shards in the layout ``video2dataset`` writes.

A record is ``KEY.mp4`` (or ``.webm``/``.mkv``/``.mov``/``.avi``) with its captions in its
``KEY.json`` (video2dataset's whole-video subtitles, a clipped record's ``clip_subtitles`` in clip
time, or a simple caption list) or ``KEY.txt``: see ``captions.py``.

Shards are split deterministically: epoch ``e`` permutes the shard list with ``(seed, e)``, and
loader stream ``s = rank * workers + worker`` of ``S = processes * workers`` reads shards
``s, s + S, s + 2S, ...`` of that order, records in file order. A stream's position (epoch,
records read) travels with each batch; checkpoints keep every stream's, so a resumed run with the
same processes x workers continues each stream at the next record. Records that cannot be used
(no video, no captions, ``start > end``, a video that does not decode, a truncated shard; any
exception raised while reading one record, e.g. a ``KEY.json`` nested too deeply) are skipped and
counted, with their shard and key, under the bad-sample stop rule.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import MilnceError, UsageError
from ..text import Tokenizer
from ..windows import WindowSettings
from .captions import BadRecord, parse_captions
from .data import CaptionedVideo, blank_sample, nearest_captions, random_crop, widen

__all__ = ["ShardSet", "is_shard_spec", "shard_set", "ShardClips", "parse_captions", "VIDEO_EXTS", "BadRecord"]

VIDEO_EXTS = ("mp4", "webm", "mkv", "mov", "avi")
MAX_BAD_IN_A_ROW = 64


@dataclass(frozen=True)
class ShardSet:
    """The expanded list of shard URLs (local paths or anything webdataset opens)."""

    urls: tuple[str, ...]
    source: str


def _need_wds() -> Any:
    try:
        import webdataset
    except ImportError:
        raise UsageError("reading tar shards needs webdataset (pip install 'milnce[train]')") from None
    return webdataset


def is_shard_spec(data: str) -> bool:
    """Whether ``--data`` names tar shards (a brace pattern, a URL or a ``.tar`` file)."""
    return data.endswith(".tar") or ".tar" in data and ("{" in data or "://" in data or data.startswith("pipe:"))


def shard_set(spec: str, base: str | None = None) -> ShardSet:
    """Expand ``spec`` (``'shards/{00000..00127}.tar'``; relative to ``base`` when given)."""
    _need_wds()
    from webdataset.shardlists import expand_urls

    urls = [u if base is None or "://" in u or u.startswith("pipe:") or os.path.isabs(u) else os.path.join(base, u)
            for u in expand_urls(spec)]
    if not urls:
        raise UsageError(f"{spec}: no shards")
    missing = [u for u in urls if "://" not in u and not u.startswith("pipe:") and not os.path.isfile(u)]
    if missing:
        raise UsageError(f"{len(missing)} of {len(urls)} shard(s) not found, e.g. {missing[0]}")
    return ShardSet(tuple(urls), spec)


def _inside(start: float, end: float, window: float, length: float | None) -> tuple[float, float]:
    """The span ``[start, end]`` to sample a window of ``window`` seconds from, kept inside a
    video of ``length`` seconds (a short clip, e.g. one subtitle line cut by video2dataset, is
    shorter than ``--min-time``): unchanged when it fits, so that no window starts past the end."""
    if length is None or end <= length:
        return start, end
    end = length
    return max(0.0, min(start, end - window)), end


def _reason(exc: Exception) -> str:
    """One line saying why a record was skipped (the exception's type when it is not ours)."""
    text = (str(exc).splitlines() or [""])[0][:300]
    return text if isinstance(exc, (BadRecord, MilnceError)) else f"{type(exc).__name__}: {text}".rstrip(": ")


class ShardClips(torch.utils.data.IterableDataset):
    """This process's endless stream of ``(clip, ids, info)`` from its share of the shards."""

    def __init__(self, shards: ShardSet, tokenizer: Tokenizer, window: WindowSettings, *, seed: int,
                 decode_size: int, min_time: float, num_candidates: int, hflip: bool, rank: int, world: int,
                 resume: dict[str, list[int]] | None = None) -> None:
        self.urls = shards.urls
        self.tokenizer, self.window, self.seed = tokenizer, window, int(seed)
        self.decode_size, self.min_time, self.k, self.hflip = int(decode_size), float(min_time), int(num_candidates), bool(hflip)
        self.rank, self.world = int(rank), int(world)
        self.resume = dict(resume or {})

    def _records(self, url: str) -> Iterator[dict[str, Any]]:
        from webdataset.tariterators import tarfile_samples

        errors: list[Exception] = []

        def keep_going(exc: Exception) -> bool:
            errors.append(exc)
            return False  # a damaged tar: stop reading this shard

        try:
            yield from tarfile_samples([{"url": url}], handler=keep_going)
        except Exception as exc:  # noqa: BLE001 - whatever the tar reader raised
            errors.append(exc)
        for err in errors:
            yield {"__key__": "(shard)", "__error__": f"damaged or truncated shard ({str(err).splitlines()[0][:200]})"}

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, dict[str, Any]]]:
        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        slot, slots = self.rank * nw + wid, self.world * nw
        if len(self.urls) < slots:
            raise UsageError(f"{len(self.urls)} shard(s) cannot feed {self.world} process(es) x {nw} loader worker(s); "
                             "use fewer --workers or more shards")
        epoch, skip = (int(x) for x in self.resume.get(str(slot), [0, 0]))
        notes: list[str] = []
        while True:
            order = np.random.default_rng([self.seed, 4, epoch]).permutation(len(self.urls))
            pos = 0
            for si in order[slot::slots]:
                url = self.urls[int(si)]
                for rec in self._records(url):
                    pos += 1
                    if pos <= skip:
                        continue
                    rng = np.random.default_rng([self.seed, 5, epoch, int(si), pos])
                    try:
                        if "__error__" in rec:
                            raise BadRecord(rec["__error__"])
                        clip, ids = self._sample(rec, rng)
                    except Exception as exc:  # noqa: BLE001 - whatever one record's decoding raised: a bad sample
                        notes.append(f"{url}:{rec.get('__key__')}: {_reason(exc)}")
                        if len(notes) >= MAX_BAD_IN_A_ROW:
                            yield (*blank_sample(self.window, self.tokenizer, self.k),
                                   self._info(notes, 1, slot, epoch, pos))
                            notes = []
                        continue
                    yield clip, ids, self._info(notes, 0, slot, epoch, pos)
                    notes = []
            skip = 0
            epoch += 1

    @staticmethod
    def _info(notes: list[str], failed: int, slot: int, epoch: int, pos: int) -> dict[str, Any]:
        return {"bad": len(notes), "failed": failed, "notes": "\n".join(notes), "slot": slot, "epoch": epoch, "pos": pos}

    def _sample(self, rec: dict[str, Any], rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        from ..video import probe_duration, read_clip

        ext = next((e for e in VIDEO_EXTS if e in rec), None)
        if ext is None:
            raise BadRecord("no video (.mp4/.webm/.mkv/.mov/.avi) in the record")
        caps = parse_captions(rec, self.min_time)
        video = CaptionedVideo("", np.array([c[0] for c in caps]), np.array([c[1] for c in caps]),
                               tuple(c[2] for c in caps))
        ci = int(rng.integers(len(caps)))
        bag = nearest_captions(video, ci, self.k)
        start, end = widen(float(video.starts[bag].min()), float(video.ends[bag].max()), self.min_time)
        w = self.window
        duration = w.num_frames / w.fps
        tmpdir = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
        with tempfile.NamedTemporaryFile(suffix="." + ext, dir=tmpdir) as f:
            f.write(rec[ext])
            f.flush()
            start, end = _inside(start, end, duration, probe_duration(f.name))
            t0 = float(rng.uniform(start, max(start, end - duration)))
            frames = read_clip(f.name, t0, t0 + duration, num_windows=1, fps=w.fps, num_frames=w.num_frames,
                               size=self.decode_size, crop="center", threads=1).frames[0]
        return random_crop(frames, self.decode_size, w.size, self.hflip, rng), self.tokenizer([video.texts[j] for j in bag])
