"""The decoding side of the pipeline: typed messages and the loop a decoding worker runs.

A worker (a process, or a thread with ``workers=0``) takes ``DecodeTask`` s from the task queue,
asks the window source for each task's windows, copies every window into a free slot of the
shared uint8 ring and tells the scheduler through the ``ready`` queue, one message type each:
``Started`` (took a task), ``Window`` (a window is in a slot), ``Done`` (the task ended, with its
window count, duration, error and notes) and ``Redo`` (a part of a split video did not match the
whole video's windows: decode the video whole).
"""

from __future__ import annotations

import contextlib
import math
import queue
import warnings
from collections.abc import Iterator
from typing import Any, NamedTuple

import torch

from ..windows import WindowSettings
from .decode import VideoError
from .sources import DecodeTask, WindowSourceFactory

__all__ = ["Started", "Window", "Done", "Redo", "Message", "decode_loop", "worker_main", "POLL_S"]

POLL_S = 0.2  # how often blocked queue waits look at the stop flag and the parent process


class Started(NamedTuple):
    """Worker ``wid`` took task ``jid``."""

    wid: int
    jid: int


class Window(NamedTuple):
    """Window ``k`` of task ``jid`` is in ``slot``; ``start``/``end`` in seconds."""

    jid: int
    k: int
    slot: int
    start: float
    end: float


class Done(NamedTuple):
    """Task ``jid`` ended after ``n`` windows. ``duration``: seconds (nan if unknown); ``error``: why
    it failed (None: it did not); ``notes``: corrupt or truncated data that was skipped;
    ``exc``: the exception itself (only from a decoding thread, never pickled)."""

    jid: int
    n: int
    duration: float
    error: str | None
    notes: list[str]
    exc: BaseException | None = None


class Redo(NamedTuple):
    """A part of split task ``jid`` did not cover the windows its header promised."""

    jid: int


Message = Started | Window | Done | Redo


class _Resplit(Exception):
    """A part of a split video did not cover the windows its header promised: redo it whole."""


def get_or_stop(q: Any, stop: Any, parent: Any) -> Any:
    """``q.get()`` that gives up (returns None) once ``stop`` is set or the parent process died."""
    while True:
        try:
            return q.get(timeout=POLL_S)
        except queue.Empty:
            if stop.is_set() or (parent is not None and not parent.is_alive()):
                return None


def message(exc: BaseException, path: str) -> str:
    """One line naming the video and why it failed."""
    msg = str(exc) or type(exc).__name__
    if path not in msg:
        msg = f"{path}: {msg}"
    if not isinstance(exc, (VideoError, OSError)):
        msg = f"{msg} ({type(exc).__name__})"
    return " ".join(msg.split())


def _as_slot(frames: Any, ws: WindowSettings) -> torch.Tensor:
    """``3 x T x S x S`` uint8: channels-last ``T x S x S x 3`` windows (FFmpeg's layout) are transposed."""
    t = frames if isinstance(frames, torch.Tensor) else torch.from_numpy(frames)
    if tuple(t.shape) == (ws.num_frames, ws.size, ws.size, 3) and tuple(t.shape) != (3, ws.num_frames, ws.size, ws.size):
        t = t.permute(3, 0, 1, 2)
    return t


class _Loop:
    """One worker's state: the queues, the slot ring, the settings and the window source."""

    def __init__(self, wid: int, tasks: Any, free: Any, ready: Any, slots: torch.Tensor, settings: WindowSettings,
                 pad: str, threads: int, stop: Any, parent: Any, source: WindowSourceFactory, keep_exc: bool) -> None:
        self.wid, self.tasks, self.free, self.ready, self.slots = wid, tasks, free, ready, slots
        self.ws, self.pad, self.threads, self.stop, self.parent = settings, pad, threads, stop, parent
        self.source, self.keep_exc = source, keep_exc

    def run(self) -> None:
        while True:
            task = get_or_stop(self.tasks, self.stop, self.parent)
            if task is None or not self.one(task):
                return

    def one(self, task: DecodeTask) -> bool:
        """Decode one task; False when told to stop."""
        self.ready.put(Started(self.wid, task.jid))
        part = task.part
        interior = part is not None and part[1] is not None  # a part with a fixed window count (not the last)
        n = 0
        notes: list[str] = []
        try:
            src = self.source(task, self.ws, self.pad, self.threads, notes.append)
            for k in self._windows(src, task):
                if k < 0:
                    return False
                n += 1
            if interior and part is not None and n != part[1]:
                raise _Resplit
            dur = math.nan if interior or src.duration is None else float(src.duration)  # the last part knows the end
            self.ready.put(Done(task.jid, n, dur, None, notes))
        except _Resplit:
            self.ready.put(Redo(task.jid))
        except Exception as exc:  # this video fails; the worker goes on with the next one
            if part is not None:
                self.ready.put(Redo(task.jid))
            else:
                self.ready.put(Done(task.jid, n, math.nan, message(exc, task.path), notes,
                                    exc if self.keep_exc else None))
        return True

    def _windows(self, src: Any, task: DecodeTask) -> Iterator[int]:
        """Put each window of ``src`` in a slot; yields its number (-1: told to stop)."""
        ws, part = self.ws, task.part
        for k, st, en, frames in src:
            if part is not None:  # a part of a split video: window numbers and times of the whole video
                k0, count = part
                real = round((en - st) * ws.fps)
                if real < ws.num_frames and (count is not None or k == 0) or count is not None and k >= count:
                    raise _Resplit
                k += k0
                st_raw = k * ws.stride / ws.fps  # the whole-video reader's arithmetic: times equal bit for bit
                st, en = round(st_raw, 9), round(st_raw + real / ws.fps, 9)
            slot = get_or_stop(self.free, self.stop, self.parent)
            if slot is None:
                yield -1
                return
            self.slots[slot].copy_(_as_slot(frames, ws))
            self.ready.put(Window(task.jid, k, slot, float(st), float(en)))
            yield k


def decode_loop(wid: int, tasks: Any, free: Any, ready: Any, slots: torch.Tensor, settings: WindowSettings,
                pad: str, threads: int, stop: Any, parent: Any, source: WindowSourceFactory,
                keep_exc: bool = False) -> None:
    """Run a decoding worker until the task queue gives None or ``stop`` is set."""
    _Loop(wid, tasks, free, ready, slots, settings, pad, threads, stop, parent, source, keep_exc).run()


def worker_main(wid: int, tasks: Any, free: Any, ready: Any, slots: torch.Tensor, settings: WindowSettings,
                pad: str, threads: int, stop: Any, source: WindowSourceFactory) -> None:
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
        decode_loop(wid, tasks, free, ready, slots, settings, pad, threads, stop, parent, source)

