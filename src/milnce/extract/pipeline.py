"""Decode -> batch -> model: many videos through the model with every core decoding.

``run_jobs(model, jobs, settings)`` embeds the windows of many videos. Decoding runs in worker
processes (``workers``; one decoder thread each by default), each taking whole videos from a
shared task queue (so long and short videos balance themselves) and writing each window as
uint8 into a slot of a shared-memory ring; only slot numbers travel through the queues. The
main process gathers ready windows of any videos into batches of ``batch_size``, runs the model
and hands the slots back. On CUDA the gather goes into pinned memory, the copy to the device is
non-blocking and the next batch is queued before the previous one's outputs are fetched, so the
device is never idle while windows are ready; batches keep one shape (a short last batch is
padded) so ``cudnn.benchmark`` tunes once. ``workers=0`` decodes in a background thread of the
calling process (like ``encode_video_file``).

A video that cannot be read yields a ``JobResult`` with ``error`` set and never stops the run;
a decoder process that dies fails only the video it was on and is replaced.
"""

from __future__ import annotations

import contextlib
import math
import os
import queue
import threading
import time
import warnings
from collections import deque
from collections.abc import Generator, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.context import ForkServerContext, SpawnContext
from typing import Any

import numpy as np
import torch

from ..errors import MilnceError, UsageError
from ..windows import WindowSettings

__all__ = ["VideoJob", "JobResult", "run_jobs", "default_workers", "PADS"]

PADS = ("repeat", "loop", "zeros")
_POLL_S = 0.2  # how often blocked queue waits look at the stop flag and the parent process
_IDLE_FLUSH_S = 0.05  # run a partial batch when no window arrived for this long
_MIN_PART_S = 20.0  # a video is split into parts of at least this long (each part seeks to a keyframe)


@dataclass(frozen=True)
class VideoJob:
    """One video to embed.

    ``starts``: explicit window start times in seconds (one window per start: the evaluation
    protocol); otherwise sliding windows over ``[start, end]`` (default: the whole video) every
    ``settings.stride`` frames. ``key``: the caller's id, returned in the result."""

    path: str
    key: Hashable = None
    starts: Sequence[float] | None = None
    start: float | None = None
    end: float | None = None


@dataclass
class JobResult:
    """The windows of one job. ``starts``/``ends``: float64 seconds per window; ``video_embedding``:
    ``n x 512`` float32; ``mixed_5c``: ``n x 1024`` float32 (None without ``features``);
    ``duration``: seconds (nan if unknown). ``error``: set (and the arrays empty) when the video
    could not be read; ``warnings``: messages about corrupt or truncated data that was skipped."""

    key: Hashable
    path: str
    starts: np.ndarray
    ends: np.ndarray
    video_embedding: np.ndarray
    mixed_5c: np.ndarray | None
    duration: float
    error: str | None = None
    warnings: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.starts.shape[0])


def default_workers() -> int:
    """Decoding processes by default: the cores this process may use, minus one for the main."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(1, cores - 1)


# --------------------------------------------------------------------------------------------
# Decoding side (a worker process or the background thread)


def _get(q: Any, stop: Any, parent: Any) -> Any:
    """``q.get()`` that gives up (returns None) once ``stop`` is set or the parent process died."""
    while True:
        try:
            return q.get(timeout=_POLL_S)
        except queue.Empty:
            if stop.is_set() or (parent is not None and not parent.is_alive()):
                return None


def _message(exc: BaseException, path: str) -> str:
    msg = str(exc) or type(exc).__name__
    if path not in msg:
        msg = f"{path}: {msg}"
    from ..video import VideoError

    if not isinstance(exc, (VideoError, OSError)):
        msg = f"{msg} ({type(exc).__name__})"
    return " ".join(msg.split())


def _decode_loop(wid: int, tasks: Any, free: Any, ready: Any, slots: torch.Tensor, settings: dict[str, Any],
                 pad: str, threads: int, stop: Any, parent: Any) -> None:
    from .decode import JobDecoder

    ws = WindowSettings.from_dict(settings)
    S, T, fps = ws.stride, ws.num_frames, ws.fps
    while True:
        task = _get(tasks, stop, parent)
        if task is None:
            return
        jid, path, starts, start, end, part = task
        interior = part is not None and part[1] is not None  # a part with a fixed window count (not the last)
        ready.put(("start", wid, jid))
        n = 0
        notes: list[str] = []
        try:
            dec = JobDecoder(path, ws, pad, starts=starts, start=start, end=end, threads=threads, warn=notes.append)
            for k, st, en, frames in dec:
                if part is not None:  # a part of a split video: window numbers and times of the whole video
                    k0, count = part
                    real = round((en - st) * fps)
                    if real < T and (count is not None or k == 0) or count is not None and k >= count:
                        raise _Resplit
                    k += k0
                    st_raw = k * S / fps  # the whole-video reader's arithmetic, so times are equal bit for bit
                    st, en = round(st_raw, 9), round(st_raw + real / fps, 9)
                slot = _get(free, stop, parent)
                if slot is None:
                    return
                slots[slot].copy_(frames)
                ready.put(("win", jid, k, slot, float(st), float(en)))
                n += 1
            if interior and n != part[1]:
                raise _Resplit
            dur = math.nan if interior or dec.duration is None else dec.duration  # the last part knows the end
            ready.put(("done", jid, n, float(dur), None, notes))
        except _Resplit:
            ready.put(("redo", jid))
        except Exception as exc:  # this video fails; the worker goes on with the next one
            ready.put(("redo", jid) if part is not None else ("done", jid, n, math.nan, _message(exc, path), notes))


class _Resplit(Exception):
    """A part of a split video did not cover the windows its header promised: redo it whole."""


def _worker_main(wid: int, tasks: Any, free: Any, ready: Any, slots: torch.Tensor, settings: dict[str, Any],
                 pad: str, threads: int, stop: Any) -> None:
    """Entry point of a decoding process."""
    import multiprocessing
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    with contextlib.suppress(Exception):  # die with the parent, even on kill -9 (Linux)
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    parent = multiprocessing.parent_process()  # its sentinel closes when the main process dies
    if parent is not None and not parent.is_alive():
        return
    torch.set_num_threads(1)
    ready.cancel_join_thread()  # never hang at exit on messages nobody will read
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _decode_loop(wid, tasks, free, ready, slots, settings, pad, threads, stop, parent)


# --------------------------------------------------------------------------------------------
# Model side


@dataclass
class _JobState:
    job: VideoJob
    rows: dict[int, tuple[float, float, np.ndarray, np.ndarray | None]] = field(default_factory=dict)
    expected: int | None = None
    duration: float = math.nan
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    parts: int = 1  # decoding tasks this video was split into
    parts_done: int = 0
    count: int = 0  # windows the finished parts reported


def _shared_uint8(shape: tuple[int, ...]) -> torch.Tensor:
    """An uninitialised uint8 tensor in shared memory, its pages touched only when written (the
    decoders write them; ``share_memory_()`` would copy the whole ring up front)."""
    new_shared = getattr(torch.UntypedStorage, "_new_shared", None)
    if new_shared is None:  # pragma: no cover - older or newer torch without it
        return torch.empty(shape, dtype=torch.uint8).share_memory_()
    n = math.prod(shape)
    return torch.empty(0, dtype=torch.uint8).set_(new_shared(n)).view(shape)


class _Decoders:
    """The decoding side: worker processes (or one thread) around a shared slot ring."""

    def __init__(self, workers: int, nslots: int, settings: WindowSettings, pad: str, threads: int) -> None:
        s = settings
        self.workers = workers
        self.settings = s.to_dict()
        self.pad, self.threads = pad, threads
        shape = (nslots, 3, s.num_frames, s.size, s.size)
        self.procs: list[Any] = []
        self.current: dict[int, int | None] = {}
        self.working: set[int] = set()  # workers (this process of each) that took a video
        self.early_deaths = 0  # processes in a row that died before taking a video
        self.ctx: ForkServerContext | SpawnContext | None = None
        if workers == 0:
            self.slots = torch.empty(shape, dtype=torch.uint8)
            self.tasks: Any = queue.Queue()
            self.free: Any = queue.Queue()
            self.ready: Any = queue.Queue()
            self.stop: Any = threading.Event()
            self.thread = threading.Thread(
                target=_decode_loop, name="milnce-extract-decode", daemon=True,
                args=(0, self.tasks, self.free, self.ready, self.slots, self.settings, pad, threads, self.stop, None))
        else:
            import torch.multiprocessing as tmp

            ctx: ForkServerContext | SpawnContext
            try:
                fs = tmp.get_context("forkserver")
                fs.set_forkserver_preload([__name__, f"{__package__}.decode"])  # torch, PyAV: imported once
                ctx = fs
            except ValueError:  # pragma: no cover - no forkserver on this platform
                ctx = tmp.get_context("spawn")
            self.ctx = ctx
            self.slots = _shared_uint8(shape)
            self.tasks = ctx.Queue()
            self.free = ctx.Queue()
            self.ready = ctx.Queue()
            self.stop = ctx.Event()
        for i in range(nslots):
            self.free.put(i)

    def start(self) -> None:
        if self.workers == 0:
            self.thread.start()
            return
        for wid in range(self.workers):
            self.procs.append(self._spawn(wid))

    def _spawn(self, wid: int) -> Any:
        assert self.ctx is not None
        p = self.ctx.Process(
            target=_worker_main, name=f"milnce-decode-{wid}", daemon=True,
            args=(wid, self.tasks, self.free, self.ready, self.slots, self.settings, self.pad, self.threads,
                  self.stop))
        p.start()
        self.current[wid] = None
        return p

    def dead(self) -> list[tuple[int, str]]:
        """Workers that died since the last look: ``(worker id, why)``; each is replaced."""
        out: list[tuple[int, str]] = []
        if self.workers == 0:
            if not self.thread.is_alive() and not self.stop.is_set():  # pragma: no cover - a bug
                raise RuntimeError("the decoding thread stopped unexpectedly")
            return out
        for wid, p in enumerate(self.procs):
            if not p.is_alive():
                code = p.exitcode
                why = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
                out.append((wid, why))
                p.join(0)
                self.early_deaths = 0 if wid in self.working else self.early_deaths + 1
                if self.early_deaths > 2 * self.workers + 2:
                    raise MilnceError(
                        f"the decoding processes keep dying before they take a video ({self.early_deaths} in a row, "
                        f"last: {why}); a script that starts extraction at import time needs an "
                        "`if __name__ == \"__main__\":` guard (workers import the main module), "
                        "or run with workers=0 to see the error in this process")
                self.working.discard(wid)
                self.procs[wid] = self._spawn(wid)
        return out

    def close(self) -> None:
        self.stop.set()
        if self.workers == 0:
            self.tasks.put(None)
            self.thread.join(timeout=10)
            return
        for _ in self.procs:
            with contextlib.suppress(Exception):
                self.tasks.put(None)
        deadline = time.monotonic() + 5.0
        for p in self.procs:
            p.join(timeout=max(0.0, deadline - time.monotonic()))
        for p in self.procs:
            if p.is_alive():
                p.terminate()
                p.join(timeout=2)
            if p.is_alive():  # pragma: no cover
                p.kill()
                p.join(timeout=2)
        for q in (self.tasks, self.free, self.ready):
            q.cancel_join_thread()
            q.close()


def _check_args(pad: str, batch_size: int | None, workers: int | None, device: torch.device) -> tuple[int, int]:
    if pad not in PADS:
        raise UsageError(f"pad must be one of {', '.join(PADS)}, got {pad!r}")
    if batch_size is None:
        batch_size = 64 if device.type == "cuda" else 8
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UsageError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
    if workers is None:
        workers = default_workers()
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise UsageError(f"workers must be a whole number >= 0, got {workers!r}")
    return batch_size, workers


def run_jobs(model: Any, jobs: Iterable[VideoJob], settings: WindowSettings, *, pad: str = "repeat",
             features: bool = True, batch_size: int | None = None, workers: int | None = None,
             progress: bool | str = False, decode_threads: int | None = None,
             stats: dict[str, float] | None = None, min_part_s: float = _MIN_PART_S) -> Generator[JobResult, None, None]:
    """Embed the windows of many videos; yields one ``JobResult`` per job, in completion order.

    ``model``: a ``MILNCE`` (``load_model``); its device and precision are used. ``settings``:
    the windows (``WindowSettings.for_model(model, ...)``). ``pad``: ``"repeat"``, ``"loop"`` or
    ``"zeros"`` (black frames past the end of a video). ``features``: also return ``mixed_5c``.
    ``batch_size``: windows per model call (default 64 on CUDA, 8 on the CPU). ``workers``:
    decoding processes (default: available cores minus one; 0 = a thread of this process).
    ``decode_threads``: decoder threads per video (default 1 with workers, automatic without).
    ``progress``: a tqdm bar on stderr (a string is its label). ``stats``: filled with
    ``wall_s``, ``model_s``, ``wait_s`` (time the model side waited for windows), ``windows``,
    ``videos``, ``batches``, ``parts`` (decoding tasks of split videos), ``first_window_s`` and
    ``last_window_s`` (when the first and last decoded window arrived). Jobs are read lazily (a
    generator is fine). ``close()`` the returned generator to stop the decoders early. With
    fewer videos than ``2 * workers``, videos longer
    than ``2 * min_part_s`` seconds are split into parts decoded side by side (same windows, same
    values: each part's windows are checked against the whole video's, else it is decoded whole).
    """
    if not isinstance(settings, WindowSettings):
        raise UsageError(f"settings must be a WindowSettings, got {type(settings).__name__}")
    device = model.device
    batch_size, workers = _check_args(pad, batch_size, workers, device)
    threads = int(decode_threads if decode_threads is not None else (1 if workers else 0))
    total = len(jobs) if hasattr(jobs, "__len__") else None  # type: ignore[arg-type]
    return _run(model, iter(jobs), settings, pad, features, batch_size, workers, progress, threads, stats, total,
                float(min_part_s))


def _parts(job: VideoJob, settings: WindowSettings, parts: int, min_part_s: float
           ) -> list[tuple[float | None, float | None, tuple[int, int | None]]] | None:
    """``(start, end, (first window, windows or None for the rest))`` of each part of a long
    sliding-window job, so several decoders share one video; None: one task for the whole video."""
    if job.starts is not None or job.start is not None or job.end is not None or parts < 2:
        return None
    if settings.decoder != "pyav":  # ffmpeg-exact frames depend on the whole stream: never split
        return None
    from ..video.decode import ClipReader

    s = settings
    try:
        r = ClipReader(job.path, s.fps, s.num_frames, s.size, s.stride, crop=s.crop, threads=1, warn=lambda m: None)
    except Exception:  # noqa: BLE001 - the decoder reports it, with the reason
        return None
    try:
        dur, nwin = r.header_duration, r.estimated_windows()
    finally:
        r.video.close()
    if not dur or not nwin:
        return None
    parts = min(parts, int(dur // max(min_part_s, 1e-9)), nwin)
    if parts < 2:
        return None
    c = -(-nwin // parts)
    out: list[tuple[float | None, float | None, tuple[int, int | None]]] = []
    for k0 in range(0, nwin, c):
        last = k0 + c >= nwin
        start = k0 * s.stride / s.fps if k0 else None
        end = None if last else ((k0 + c - 1) * s.stride + s.num_frames) / s.fps
        out.append((start, end, (k0, None if last else c)))
    return out if len(out) > 1 else None


def _run(model: Any, jobs: Iterator[VideoJob], settings: WindowSettings, pad: str, features: bool, B: int,
         workers: int, progress: bool | str, threads: int, stats: dict[str, float] | None,
         total: int | None, min_part_s: float) -> Generator[JobResult, None, None]:
    device = model.device
    cuda = device.type == "cuda"
    # MILNCE: its network (the fast path is built here, outside inference mode); another encoder
    # (a protocols.VideoEncoder stand-in): its encode_video
    net = getattr(model, "video_net", None)
    nslots = B + 2 * max(workers, 1) + 2  # a batch waiting to launch + two windows per decoder
    dec = _Decoders(workers, nslots, settings, pad, threads)
    s = settings
    shape = (B, 3, s.num_frames, s.size, s.size)
    buffers: list[torch.Tensor] = []  # pinned, allocated once the decoders are starting
    old_benchmark = torch.backends.cudnn.benchmark
    if cuda:
        torch.backends.cudnn.benchmark = True
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, unit="video", desc=progress if isinstance(progress, str) else "videos",
                   dynamic_ncols=True)
    state: dict[int, _JobState] = {}
    pending: deque[tuple[int, int, int, float, float]] = deque()  # (job, window, slot, start, end)
    inflight: deque[tuple[list[tuple[int, int, float, float]], dict[str, torch.Tensor]]] = deque()
    finished: list[JobResult] = []
    max_out = 2 * max(workers, 1) + 1
    next_id = 0
    outstanding = 0
    exhausted = False
    nbatch = 0
    t0 = time.perf_counter()
    model_s = wait_s = 0.0
    nwin = nvid = nparts = 0
    times = [math.nan, math.nan]  # first and last window received, seconds from the start

    def submit(job: VideoJob, split: int = 1) -> None:
        nonlocal next_id, nparts
        jid = next_id
        next_id += 1
        st = state[jid] = _JobState(job)
        starts = None if job.starts is None else [float(x) for x in job.starts]
        parts = _parts(job, settings, split, min_part_s) if split > 1 else None
        if parts is None:
            dec.tasks.put((jid, os.fspath(job.path), starts, job.start, job.end, None))
            return
        st.parts = len(parts)
        nparts += len(parts)
        for a, b, part in parts:
            dec.tasks.put((jid, os.fspath(job.path), None, a, b, part))

    def feed() -> None:
        nonlocal outstanding, exhausted
        first = next_id == 0
        new: list[VideoJob] = []
        while not exhausted and outstanding + len(new) < max_out:
            try:
                job = next(jobs)
            except StopIteration:
                exhausted = True
                break
            new.append(job if isinstance(job, VideoJob) else VideoJob(os.fspath(job)))  # type: ignore[arg-type]
        # Fewer videos than decoders: split long ones into parts, so every decoder has work.
        split = -(-2 * workers // len(new)) if first and exhausted and new and workers > 1 and len(new) < 2 * workers else 1
        for job in new:
            submit(job, split)
            outstanding += 1

    def redo(jid: int) -> None:
        """A split video whose parts did not add up: drop what they gave, decode it whole."""
        st = state.pop(jid, None)
        if st is None:
            return
        for item in [p for p in pending if p[0] == jid]:
            pending.remove(item)
            dec.free.put(item[2])
        submit(st.job)

    def complete(jid: int) -> None:
        nonlocal outstanding, nvid
        st = state.pop(jid)
        outstanding -= 1
        nvid += 1
        job = st.job
        if st.error is not None:
            e = np.zeros(0, np.float64)
            res = JobResult(job.key, os.fspath(job.path), e, e.copy(), np.zeros((0, 512), np.float32),
                            np.zeros((0, 1024), np.float32) if features else None, st.duration, st.error, st.notes)
        elif not st.rows:
            e = np.zeros(0, np.float64)
            res = JobResult(job.key, os.fspath(job.path), e, e.copy(), np.zeros((0, 512), np.float32),
                            np.zeros((0, 1024), np.float32) if features else None, st.duration,
                            f"{job.path}: no windows (no decodable frames in the requested range)", st.notes)
        else:
            order = sorted(st.rows)
            rows = [st.rows[k] for k in order]
            res = JobResult(
                job.key, os.fspath(job.path),
                np.asarray([r[0] for r in rows], np.float64), np.asarray([r[1] for r in rows], np.float64),
                np.stack([r[2] for r in rows]).astype(np.float32, copy=False),
                np.stack([r[3] for r in rows]).astype(np.float32, copy=False) if features else None,  # type: ignore[misc]
                st.duration, None, st.notes)
        finished.append(res)
        if bar is not None:
            bar.update(1)

    def maybe_complete(jid: int) -> None:
        st = state.get(jid)
        if st is not None and st.expected is not None and (st.error is not None or len(st.rows) >= st.expected):
            complete(jid)

    def handle(msg: tuple[Any, ...]) -> None:
        kind = msg[0]
        if kind == "start":
            dec.current[msg[1]] = msg[2]
            dec.working.add(msg[1])
        elif kind == "win":
            _, jid, k, slot, st, en = msg
            times[1] = time.perf_counter() - t0
            if math.isnan(times[0]):
                times[0] = times[1]
            if jid in state and state[jid].error is None:
                pending.append((jid, k, slot, st, en))
            else:
                dec.free.put(slot)
        elif kind == "redo":
            redo(msg[1])
        else:
            _, jid, n, dur, err, notes = msg
            st = state.get(jid)
            if st is None:
                return
            st.parts_done += 1
            st.count += n
            st.notes += [m for m in notes if m not in st.notes]
            if not math.isnan(dur):
                st.duration = dur
            if err is not None:
                fail(jid, err)
            elif st.parts_done == st.parts:
                st.expected = st.count
                maybe_complete(jid)

    def fail(jid: int, err: str) -> None:
        st = state.get(jid)
        if st is None:
            return
        st.error, st.rows = err, {}
        st.expected = st.expected or 0
        for item in [p for p in pending if p[0] == jid]:
            pending.remove(item)
            dec.free.put(item[2])
        complete(jid)

    def launch() -> None:
        nonlocal model_s, nbatch
        take = [pending.popleft() for _ in range(min(B, len(pending)))]
        idx = torch.tensor([t[2] for t in take], dtype=torch.long)
        tm = time.perf_counter()
        if cuda:
            buf = buffers[nbatch % 2]
            torch.index_select(dec.slots, 0, idx, out=buf[: len(take)])
        else:
            buf = dec.slots.index_select(0, idx)
        for t in take:
            dec.free.put(t[2])
        with torch.inference_mode():
            x = buf.to(device, non_blocking=True).float().div_(255)
            if net is not None:
                out = net(x)
            elif features:
                emb_, mix_ = model.encode_video(x, features=True)
                out = {"video_embedding": emb_, "mixed_5c": mix_}
            else:
                out = {"video_embedding": model.encode_video(x)}
        inflight.append(([(t[0], t[1], t[3], t[4]) for t in take], out))
        nbatch += 1
        while len(inflight) > (1 if cuda else 0):
            collect()
        model_s += time.perf_counter() - tm

    def collect() -> None:
        nonlocal nwin
        meta, out = inflight.popleft()
        emb = out["video_embedding"].float().cpu().numpy()
        mix = out["mixed_5c"].float().cpu().numpy() if features else None
        touched = set()
        for r, (jid, k, st, en) in enumerate(meta):
            s_ = state.get(jid)
            if s_ is None or s_.error is not None:
                continue
            s_.rows[k] = (st, en, emb[r].copy(), mix[r].copy() if mix is not None else None)
            touched.add(jid)
            nwin += 1
        for jid in touched:
            maybe_complete(jid)

    try:
        dec.start()
        if cuda:
            buffers += [torch.empty(shape, dtype=torch.uint8, pin_memory=True) for _ in range(2)]
        idle = False
        while True:
            feed()
            while True:  # take every message that is already there
                try:
                    handle(dec.ready.get_nowait())
                except queue.Empty:
                    break
            yield from finished
            finished.clear()
            if len(pending) >= B or (pending and (idle or (exhausted and not _decoding(state)))):
                launch()
                idle = False
                yield from finished
                finished.clear()
                continue
            if not pending and not state and exhausted:
                break
            if inflight and not pending:
                tm = time.perf_counter()
                collect()  # nothing to queue behind it: fetch the outputs while decoders work
                model_s += time.perf_counter() - tm
                continue
            tw = time.perf_counter()
            if True:
                try:
                    handle(dec.ready.get(timeout=_IDLE_FLUSH_S if pending else _POLL_S))
                    idle = False
                except queue.Empty:
                    idle = bool(pending)
                    for wid, why in dec.dead():
                        jid = dec.current.get(wid)
                        if jid is not None:
                            fail(jid, f"{state[jid].job.path}: the decoding process died ({why})"
                                 if jid in state else "decoder died")
            wait_s += time.perf_counter() - tw
        while inflight:
            collect()
        yield from finished
        finished.clear()
    finally:
        dec.close()
        if bar is not None:
            bar.close()
        if cuda:
            torch.backends.cudnn.benchmark = old_benchmark
        if stats is not None:
            stats.update(wall_s=time.perf_counter() - t0, model_s=model_s, wait_s=wait_s, windows=float(nwin),
                         videos=float(nvid), batches=float(nbatch), parts=float(nparts),
                         first_window_s=times[0], last_window_s=times[1])


def _decoding(state: dict[int, _JobState]) -> bool:
    """Whether any job still waits for windows from the decoders."""
    return any(st.expected is None for st in state.values())
