"""``VideoClipDataset``: the windows of many videos for (multi-worker) torch ``DataLoader``s."""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from ..errors import UsageError
from .decode import DEFAULT, ClipReader, VideoError, check_common

__all__ = ["VideoClipDataset"]


class VideoClipDataset(torch.utils.data.IterableDataset):
    """Windows of many videos for (multi-worker) ``DataLoader``s.

    ``items``: paths, or ``(path, start, end)`` rows (``None`` for an open end). Each video is
    read in one decoding pass (``read_clips``) and yields one dict per window::

        {"frames": uint8 3 x T x S x S, "path": str, "index": row number, "window": k,
         "start": float, "end": float, "error": ""}

    Rows are split across ``DataLoader`` workers (row ``i`` goes to worker ``i % num_workers``);
    each worker opens its own files. A video that cannot be read does not stop the loader: it
    yields one item with ``error`` set to the message, ``window = -1``, NaN times and zero frames
    (so the default collate still works; filter with ``batch["error"]``), and a warning is issued.
    ``on_error="skip"`` only warns, ``"raise"`` re-raises. ``errors`` lists ``(path, message)``
    of the files that failed in this process (with workers, use the ``error`` field instead).
    """

    def __init__(self, items: Sequence[str | os.PathLike[str] | tuple[Any, Any, Any]], fps: float = DEFAULT.fps,
                 num_frames: int = DEFAULT.num_frames, size: int = DEFAULT.size, stride: int = DEFAULT.stride,
                 crop: str = "center",
                 pad: str = "repeat", on_error: str = "report", threads: int = 1) -> None:
        super().__init__()
        check_common(fps, num_frames, size, stride, crop, pad)
        if on_error not in ("report", "skip", "raise"):
            raise UsageError(f"on_error must be 'report', 'skip' or 'raise', got {on_error!r}")
        rows: list[tuple[str, float | None, float | None]] = []
        for it in items:
            if isinstance(it, (str, os.PathLike)):
                rows.append((os.fspath(it), None, None))  # type: ignore[arg-type]
            else:
                path, start, end = it
                rows.append((os.fspath(path), None if start is None else float(start), None if end is None else float(end)))
        self.rows = rows
        self.fps, self.num_frames, self.size, self.stride = float(fps), int(num_frames), int(size), int(stride)
        self.crop, self.pad, self.on_error, self.threads = crop, pad, on_error, threads
        self.errors: list[tuple[str, str]] = []

    @property
    def num_videos(self) -> int:
        """Number of rows (videos); the number of windows is known only once they are read."""
        return len(self.rows)

    def _error_item(self, index: int, path: str, msg: str) -> dict[str, Any]:
        return {
            "frames": torch.zeros(3, self.num_frames, self.size, self.size, dtype=torch.uint8),
            "path": path, "index": index, "window": -1, "start": math.nan, "end": math.nan, "error": msg,
        }

    def iter_row(self, index: int) -> Iterator[dict[str, Any]]:
        path, start, end = self.rows[index]
        k = 0
        try:
            reader = ClipReader(path, self.fps, self.num_frames, self.size, self.stride, start, end,
                                 self.crop, self.pad, threads=self.threads)
            for k, clip in enumerate(reader):
                yield {"frames": clip.frames, "path": path, "index": index, "window": k,
                       "start": clip.start, "end": clip.end, "error": ""}
        except Exception as exc:  # per-file error: report and go on
            if self.on_error == "raise":
                raise
            msg = str(exc) if path in str(exc) else f"{path}: {exc}"
            if not isinstance(exc, (VideoError, OSError)):
                msg = f"{msg} ({type(exc).__name__})"
            self.errors.append((path, msg))
            warnings.warn(f"skipping video: {msg}", RuntimeWarning, stacklevel=2)
            if self.on_error == "report":
                yield self._error_item(index, path, msg)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        for i in range(wid, len(self.rows), nw):
            yield from self.iter_row(i)
