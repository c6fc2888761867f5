"""The model side of the pipeline: ``Scheduler`` feeds tasks to the decoders, turns their typed
messages into pending windows, runs full batches through the model and completes each video."""

from __future__ import annotations

import math
import os
import queue
import time
from collections import deque
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..printable import show_path
from ..protocols import VideoEncoder
from ..windows import WindowSettings
from .decoders import Decoders, Part
from .jobs import VideoJob
from .result import VideoWindows
from .sources import DecodeTask
from .worker import POLL_S, Done, Message, Redo, Started, Window

__all__ = ["Scheduler"]

_IDLE_FLUSH_S = 0.05  # run a partial batch when no window arrived for this long


@dataclass
class _JobState:
    job: VideoJob
    rows: dict[int, tuple[float, float, np.ndarray, np.ndarray | None]] = field(default_factory=dict)
    expected: int | None = None
    duration: float = math.nan
    error: str | None = None
    exc: BaseException | None = None
    notes: list[str] = field(default_factory=list)
    parts: int = 1  # decoding tasks this video was split into
    parts_done: int = 0
    count: int = 0  # windows the finished parts reported


@dataclass
class _Pending:
    jid: int
    k: int
    slot: int
    start: float
    end: float


@dataclass
class _Stats:
    t0: float = field(default_factory=time.perf_counter)
    model_s: float = 0.0
    wait_s: float = 0.0
    windows: int = 0
    videos: int = 0
    parts: int = 0
    batches: int = 0
    first: float = math.nan
    last: float = math.nan

    def as_dict(self) -> dict[str, float]:
        return {"wall_s": time.perf_counter() - self.t0, "model_s": self.model_s, "wait_s": self.wait_s,
                "windows": float(self.windows), "videos": float(self.videos), "batches": float(self.batches),
                "parts": float(self.parts), "first_window_s": self.first, "last_window_s": self.last}


def _sizes(model: VideoEncoder) -> tuple[int, int]:
    """Embedding and feature sizes of an empty result: the model's (before any batch ran)."""
    emb = int(getattr(getattr(model, "info", None), "embed_dim", 0) or 0)
    fc = getattr(getattr(model, "net", None), "fc", None)
    return emb, int(getattr(fc, "in_features", 0) or 0)


class Scheduler:
    """Feeds jobs to ``decoders``, batches their windows through ``model``, yields each video's
    ``VideoWindows`` once all its windows are embedded (``run``)."""

    def __init__(self, model: VideoEncoder, decoders: Decoders, settings: WindowSettings, *, features: bool,
                 batch_size: int, progress: bool | str, total: int | None, stats: dict[str, float] | None,
                 split: Callable[[VideoJob, int], list[Part] | None]) -> None:
        self.model, self.dec, self.settings = model, decoders, settings
        self.device = model.device
        self.cuda = self.device.type == "cuda"
        # MILNCE: its network (the fast path is built here, outside inference mode); another
        # encoder (a protocols.VideoEncoder stand-in): its encode_video
        self.net: Callable[[torch.Tensor], dict[str, torch.Tensor]] | None = getattr(model, "video_net", None)
        self.features, self.B, self.split = features, batch_size, split
        self.workers = decoders.workers
        self.max_out = 2 * max(self.workers, 1) + 1  # videos handed to the decoders at a time
        self.state: dict[int, _JobState] = {}
        self.pending: deque[_Pending] = deque()
        self.inflight: deque[tuple[list[_Pending], dict[str, torch.Tensor]]] = deque()
        self.finished: list[VideoWindows] = []
        self.buffers: list[torch.Tensor] = []  # pinned, allocated once the decoders are starting
        self.sizes = _sizes(model)
        self.next_id = self.outstanding = 0
        self.exhausted = False
        self.st = _Stats()
        self.stats_out = stats
        self.progress, self.total = progress, total
        self.bar: Any = None

    # -- jobs in ---------------------------------------------------------------------------

    def _submit(self, job: VideoJob, split: int = 1) -> None:
        jid = self.next_id
        self.next_id += 1
        st = self.state[jid] = _JobState(job)
        path = os.fspath(job.path)
        parts = self.split(job, split) if split > 1 else None
        if parts is None:
            starts = None if job.starts is None else tuple(float(x) for x in job.starts)
            self.dec.tasks.put(DecodeTask(jid, path, starts, job.start, job.end, None))
            return
        st.parts = len(parts)
        self.st.parts += len(parts)
        for a, b, part in parts:
            self.dec.tasks.put(DecodeTask(jid, path, None, a, b, part))

    def _feed(self, jobs: Iterator[Any]) -> None:

        first = self.next_id == 0
        new: list[VideoJob] = []
        while not self.exhausted and self.outstanding + len(new) < self.max_out:
            try:
                job = next(jobs)
            except StopIteration:
                self.exhausted = True
                break
            new.append(job if isinstance(job, VideoJob) else VideoJob(os.fspath(job)))
        w = self.workers  # fewer videos than decoders: split long ones into parts, so every decoder has work
        split = -(-2 * w // len(new)) if first and self.exhausted and new and w > 1 and len(new) < 2 * w else 1
        for job in new:
            self._submit(job, split)
            self.outstanding += 1

    # -- messages from the decoders --------------------------------------------------------

    def _handle(self, msg: Message) -> None:
        if isinstance(msg, Window):
            self.st.last = time.perf_counter() - self.st.t0
            if math.isnan(self.st.first):
                self.st.first = self.st.last
            s = self.state.get(msg.jid)
            if s is not None and s.error is None:
                self.pending.append(_Pending(msg.jid, msg.k, msg.slot, msg.start, msg.end))
            else:
                self.dec.free.put(msg.slot)
        elif isinstance(msg, Started):
            self.dec.current[msg.wid] = msg.jid
            self.dec.working.add(msg.wid)
        elif isinstance(msg, Done):
            self._done(msg)
        elif isinstance(msg, Redo):
            self._redo(msg.jid)

    def _done(self, msg: Done) -> None:
        s = self.state.get(msg.jid)
        if s is None:
            return
        s.parts_done += 1
        s.count += msg.n
        s.notes += [m for m in msg.notes if m not in s.notes]
        if not math.isnan(msg.duration):
            s.duration = msg.duration
        if msg.error is not None:
            s.exc = msg.exc
            self._fail(msg.jid, msg.error)
        elif s.parts_done == s.parts:
            s.expected = s.count
            self._maybe_complete(msg.jid)

    def _drop_pending(self, jid: int) -> None:
        for item in [p for p in self.pending if p.jid == jid]:
            self.pending.remove(item)
            self.dec.free.put(item.slot)

    def _redo(self, jid: int) -> None:
        """A split video whose parts did not add up: drop what they gave, decode it whole."""
        s = self.state.pop(jid, None)
        if s is not None:
            self._drop_pending(jid)
            self._submit(s.job)

    def _fail(self, jid: int, err: str) -> None:
        s = self.state.get(jid)
        if s is None:
            return
        s.error, s.rows = err, {}
        s.expected = s.expected or 0
        self._drop_pending(jid)
        self._complete(jid)

    # -- results out -----------------------------------------------------------------------

    def _maybe_complete(self, jid: int) -> None:
        s = self.state.get(jid)
        if s is not None and s.expected is not None and (s.error is not None or len(s.rows) >= s.expected):
            self._complete(jid)

    def _complete(self, jid: int) -> None:
        s = self.state.pop(jid)
        self.outstanding -= 1
        self.st.videos += 1
        job, path = s.job, os.fspath(s.job.path)
        err = s.error
        if err is None and not s.rows:
            err = f"{job.path}: no windows (no decodable frames in the requested range)"
        d_emb, d_feat = self.sizes
        if err is not None:
            e = np.zeros(0, np.float64)
            res = VideoWindows(path, e, e.copy(), np.zeros((0, d_emb), np.float32),
                               np.zeros((0, d_feat), np.float32) if self.features else None, s.duration,
                               key=job.key, error=err, warnings=s.notes, exception=s.exc, settings=self.settings)
        else:
            rows = [s.rows[k] for k in sorted(s.rows)]
            res = VideoWindows(
                path, np.asarray([r[0] for r in rows], np.float64), np.asarray([r[1] for r in rows], np.float64),
                np.stack([r[2] for r in rows]).astype(np.float32, copy=False),
                np.stack([r[3] for r in rows]).astype(np.float32, copy=False) if self.features else None,  # type: ignore[misc]
                s.duration, key=job.key, warnings=s.notes, settings=self.settings)
        self.finished.append(res)
        if self.bar is not None:
            self.bar.update(1)

    # -- the model -------------------------------------------------------------------------

    def _forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.net is not None:
            return self.net(x)
        if self.features:
            emb, mix = self.model.encode_video(x, features=True)
            return {"video_embedding": emb, "mixed_5c": mix}
        return {"video_embedding": self.model.encode_video(x)}

    def _launch(self) -> None:
        take = [self.pending.popleft() for _ in range(min(self.B, len(self.pending)))]
        idx = torch.tensor([t.slot for t in take], dtype=torch.long)
        tm = time.perf_counter()
        if self.cuda:
            buf = self.buffers[self.st.batches % 2]
            torch.index_select(self.dec.slots, 0, idx, out=buf[: len(take)])
        else:
            buf = self.dec.slots.index_select(0, idx)
        for t in take:
            self.dec.free.put(t.slot)
        with torch.inference_mode(), _cudnn_benchmark(self.cuda):
            out = self._forward(buf.to(self.device, non_blocking=True).float().div_(255))
        self.inflight.append((take, out))
        self.st.batches += 1
        while len(self.inflight) > (1 if self.cuda else 0):
            self._collect()
        self.st.model_s += time.perf_counter() - tm

    def _collect(self) -> None:
        meta, out = self.inflight.popleft()
        emb = out["video_embedding"].float().cpu().numpy()
        mix = out["mixed_5c"].float().cpu().numpy() if self.features else None
        self.sizes = (emb.shape[1], mix.shape[1] if mix is not None else self.sizes[1])
        touched = set()
        for r, p in enumerate(meta):
            s = self.state.get(p.jid)
            if s is None or s.error is not None:
                continue
            s.rows[p.k] = (p.start, p.end, emb[r].copy(), mix[r].copy() if mix is not None else None)
            touched.add(p.jid)
            self.st.windows += 1
        for jid in touched:
            self._maybe_complete(jid)

    # -- the loop --------------------------------------------------------------------------

    def _decoding(self) -> bool:
        """Whether any job still waits for windows from the decoders."""
        return any(s.expected is None for s in self.state.values())

    def _drain(self) -> None:
        """Take every message that is already there."""
        while True:
            try:
                self._handle(self.dec.ready.get_nowait())
            except queue.Empty:
                return

    def _wait(self) -> bool:
        """Wait for the next message (a short wait while windows are pending); True if one came."""
        tw = time.perf_counter()
        try:
            self._handle(self.dec.ready.get(timeout=_IDLE_FLUSH_S if self.pending else POLL_S))
            return True
        except queue.Empty:
            for wid, why in self.dec.dead():
                jid = self.dec.current.get(wid)
                if jid is not None and jid in self.state:
                    self._fail(jid, f"{self.state[jid].job.path}: the decoding process died ({why})")
            return False
        finally:
            self.st.wait_s += time.perf_counter() - tw

    def _step(self, jobs: Iterator[Any], idle: bool) -> bool | None:
        """One turn of the loop; returns the new ``idle`` flag, or None when everything is done."""
        self._feed(jobs)
        self._drain()
        if len(self.pending) >= self.B or (self.pending and (idle or (self.exhausted and not self._decoding()))):
            self._launch()
            return False
        if not self.pending and not self.state and self.exhausted:
            return None
        if self.inflight and not self.pending:
            tm = time.perf_counter()
            self._collect()  # nothing to queue behind it: fetch the outputs while decoders work
            self.st.model_s += time.perf_counter() - tm
            return idle
        return False if self._wait() else bool(self.pending)

    def run(self, jobs: Iterator[Any]) -> Generator[VideoWindows, None, None]:
        """Yield each job's ``VideoWindows`` as it completes; ``close()`` stops the decoders."""
        try:
            self._open_bar()
            self.dec.start()
            if self.cuda:
                shape = (self.B, *self.dec.slots.shape[1:])
                self.buffers += [torch.empty(shape, dtype=torch.uint8, pin_memory=True) for _ in range(2)]
            idle: bool | None = False
            while idle is not None:
                idle = self._step(jobs, idle)
                yield from self._take_finished()
            while self.inflight:
                self._collect()
            yield from self._take_finished()
        finally:
            self.dec.close()
            if self.bar is not None:
                self.bar.close()
            if self.stats_out is not None:
                self.stats_out.update(self.st.as_dict())

    def _take_finished(self) -> list[VideoWindows]:
        out, self.finished = self.finished, []
        return out

    def _open_bar(self) -> None:
        if self.progress:
            from tqdm.auto import tqdm

            label = show_path(self.progress) if isinstance(self.progress, str) else "videos"
            self.bar = tqdm(total=self.total, unit="video", desc=label, dynamic_ncols=True)


class _cudnn_benchmark:  # noqa: N801 - used like a function
    """``cudnn.benchmark`` on for one model call on CUDA (restored after: the process-wide flag is the caller's)."""

    def __init__(self, on: bool) -> None:
        self.on = on
        self.old = False

    def __enter__(self) -> None:
        if self.on:
            self.old = torch.backends.cudnn.benchmark
            torch.backends.cudnn.benchmark = True

    def __exit__(self, *exc: object) -> None:
        if self.on:
            torch.backends.cudnn.benchmark = self.old
