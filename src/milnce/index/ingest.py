"""What building an index from videos (``milnce.index.build``) and from feature files
(``milnce.index.features``) share (one video's windows are ``milnce.video.result.VideoWindows``):
content hashes, printable paths and reasons, the finishing steps (prune, compact, ANN) and the
progress bar."""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Callable

import numpy as np

from ..printable import show_path
from ..video import failure_reason
from .backends import AnyWriter
from .records import IndexReport

__all__ = ["file_hash", "reason", "reason_text", "finish", "Progress", "check_finite",
           "COMPACT_DEAD_SHARE"]

COMPACT_DEAD_SHARE = 0.25


def file_hash(path: str, chunk: int = 1 << 20) -> str:
    """Content hash (BLAKE2b-128 of the whole file) used to recognise moved or touched videos."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()



def reason(exc: BaseException, path: str) -> str:
    """An error message without the path (the report shows the path once)."""
    return reason_text(str(exc), path) if str(exc) else type(exc).__name__


def reason_text(msg: str, path: str) -> str:
    """``msg`` without ``path`` (the report shows the path once): ``milnce.video.result.failure_reason``,
    the reason ``extract`` and ``eval`` list too."""
    return failure_reason(msg, path)


def finish(idx: AnyWriter, report: IndexReport, *, prune: bool, ann: bool | str, ann_min_windows: int, progress: bool,
            queries: Callable[[], np.ndarray | None]) -> None:
    """Prune, compact when dead rows pile up, (re)build the ANN index, fill the report's totals."""
    if prune:
        gone = [r.id for r in idx.rows() if not os.path.exists(r.path)]
        report.pruned = [idx.row(v).path for v in gone]
        idx.remove_videos(gone)
    if idx.num_rows and (idx.num_rows - idx.num_live) > COMPACT_DEAD_SHARE * idx.num_rows:
        report.compacted = idx.compact()
    if ann and idx.num_live < ann_min_windows:
        report.ann = {"skipped": True, "windows": idx.num_live, "min_windows": int(ann_min_windows),
                      "reason": f"the index has {idx.num_live:,} windows, fewer than {int(ann_min_windows):,}: "
                                "exact search is fast there, so no ANN index was built (searches stay exact; "
                                "--ann-min-windows N to build one anyway)"}
    elif ann:
        info = idx.meta.get("ann")
        kind = "pq" if ann == "pq" else "ivf"
        fresh = (info and info.get("rows") == idx.num_rows and idx.ann_status()["state"] == "ok"
                 and (info.get("format") == "pq") == (kind == "pq"))
        if fresh:
            report.ann = info
        elif idx.num_live:
            report.ann = idx.build_ann(queries=queries(), progress=progress, kind=kind)
    report.num_videos = idx.num_videos
    report.num_windows = idx.num_live


class Progress:
    """Videos done / to do, video-hours and ETA (by video-seconds)."""

    def __init__(self, num_videos: int, total_seconds: float, enabled: bool = True) -> None:
        self.n, self.i = num_videos, 0
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=round(total_seconds / 3600, 4) or None, unit="video-h", file=sys.stderr,
                            bar_format="{desc} {percentage:3.0f}%|{bar}| {n:.3f}/{total:.3f} video-h "
                                       "[{elapsed}<{remaining}{postfix}]" if total_seconds else None,
                            dynamic_ncols=True, desc=f"videos 0/{num_videos}")

    def done(self, seconds: float, path: str = "") -> None:
        """One more video settled (``seconds`` of it embedded; ``path``: shown as the latest)."""
        self.i += 1
        if self.bar is not None:
            self.bar.set_description(f"videos {self.i}/{self.n}", refresh=False)
            if path:
                self.bar.set_postfix_str(show_path(os.path.basename(path)[:30]), refresh=False)
            hours = seconds / 3600
            if self.bar.total is not None and self.bar.n + hours > self.bar.total:
                self.bar.total = self.bar.n + hours
            self.bar.update(hours)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def check_finite(what: str, starts: np.ndarray, ends: np.ndarray, embeddings: np.ndarray) -> str | None:
    """Why one video's windows cannot go into an index (NaN or infinite times or embeddings), or None."""
    for name, arr in (("window start times", starts), ("window end times", ends), ("embeddings", embeddings)):
        a = np.asarray(arr)
        if a.dtype.kind not in "fiu":
            return f"{what}: the {name} are not numbers ({a.dtype})"
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            return f"{what}: the {name} hold NaN or infinite values"
    return None
