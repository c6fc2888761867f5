"""The decoding side of the pipeline as the scheduler sees it: worker processes (or one thread)
around a shared uint8 slot ring, their queues, and how a long video is split into parts."""

from __future__ import annotations

import contextlib
import math
import queue
import threading
import time
from multiprocessing.context import ForkServerContext, SpawnContext
from typing import Any

import torch

from ..errors import MilnceError
from ..windows import WindowSettings
from .jobs import VideoJob
from .sources import WindowSourceFactory
from .worker import decode_loop, worker_main

__all__ = ["Decoders", "split_parts"]

Part = tuple[float | None, float | None, tuple[int, int | None]]


def _shared_uint8(shape: tuple[int, ...]) -> torch.Tensor:
    """An uninitialised uint8 tensor in shared memory, its pages touched only when written (the
    decoders write them; ``share_memory_()`` would copy the whole ring up front)."""
    new_shared = getattr(torch.UntypedStorage, "_new_shared", None)
    if new_shared is None:  # pragma: no cover - older or newer torch without it
        return torch.empty(shape, dtype=torch.uint8).share_memory_()
    n = math.prod(shape)
    return torch.empty(0, dtype=torch.uint8).set_(new_shared(n)).view(shape)


class Decoders:
    """Worker processes (or one thread with ``workers=0``) around a shared slot ring."""

    def __init__(self, workers: int, nslots: int, settings: WindowSettings, pad: str, threads: int,
                 source: WindowSourceFactory) -> None:
        s = settings
        self.workers = workers
        self.settings, self.pad, self.threads, self.source = settings, pad, threads, source
        shape = (nslots, 3, s.num_frames, s.size, s.size)
        self.procs: list[Any] = []
        self.current: dict[int, int | None] = {}  # worker -> the task it is on
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
                target=decode_loop, name="milnce-extract-decode", daemon=True,
                args=(0, self.tasks, self.free, self.ready, self.slots, settings, pad, threads, self.stop, None,
                      source, True))
        else:
            self.ctx = self._context()
            self.slots = _shared_uint8(shape)
            self.tasks = self.ctx.Queue()
            self.free = self.ctx.Queue()
            self.ready = self.ctx.Queue()
            self.stop = self.ctx.Event()
        for i in range(nslots):
            self.free.put(i)

    @staticmethod
    def _context() -> ForkServerContext | SpawnContext:
        import torch.multiprocessing as tmp

        try:
            fs = tmp.get_context("forkserver")
            fs.set_forkserver_preload([f"{__package__}.worker"])  # torch, PyAV: imported once
            return fs
        except ValueError:  # pragma: no cover - no forkserver on this platform
            return tmp.get_context("spawn")

    def start(self) -> None:
        if self.workers == 0:
            self.thread.start()
            return
        for wid in range(self.workers):
            self.procs.append(self._spawn(wid))

    def _spawn(self, wid: int) -> Any:
        assert self.ctx is not None
        p = self.ctx.Process(
            target=worker_main, name=f"milnce-decode-{wid}", daemon=True,
            args=(wid, self.tasks, self.free, self.ready, self.slots, self.settings, self.pad, self.threads,
                  self.stop, self.source))
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


def split_parts(job: VideoJob, settings: WindowSettings, parts: int, min_part_s: float) -> list[Part] | None:
    """``(start, end, (first window, windows or None for the rest))`` of each part of a long
    sliding-window job, so several decoders share one video; None: one task for the whole video."""
    if job.starts is not None or job.start is not None or job.end is not None or parts < 2:
        return None
    if not math.isfinite(min_part_s):  # a source that keeps videos whole (``sources.splittable``)
        return None
    from .decode import ClipReader

    s = settings
    try:
        r = ClipReader.from_settings(job.path, s, threads=1, warn=lambda m: None)
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
    out: list[Part] = []
    for k0 in range(0, nwin, c):
        last = k0 + c >= nwin
        start = k0 * s.stride / s.fps if k0 else None
        end = None if last else ((k0 + c - 1) * s.stride + s.num_frames) / s.fps
        out.append((start, end, (k0, None if last else c)))
    return out if len(out) > 1 else None
