"""``migrate``: copy an index folder into a Milvus collection, resumably and idempotently.

Videos go in the folder's row order, a batch of about ``batch_windows`` windows at a time, each
under its own video id (``MilvusIndex.add_videos(ids=...)``): window keys are ``(video, gen, j)``,
so a rerun after a kill upserts the same keys (no duplicate), skips the videos whose record is
already there with the same content (a record is written only after its windows: no missing
window), replaces changed ones and removes videos the folder no longer has. At the end the
collection is checked: its window count equals the folder's live windows (windows of videos
that have no record, left by a kill, are deleted first) and a sample of videos has the same
window times and float32 vectors, bit for bit."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np

from ..windows import WindowSettings
from .errors import IndexFolderError
from .milvus_client import DEFAULT_COLLECTION, key_parts
from .milvus_store import MilvusIndex
from .reader import IndexReader

__all__ = ["migrate", "MigrateReport", "MigrateError", "VERIFY_VIDEOS"]

log = logging.getLogger("milnce.index")
VERIFY_VIDEOS = 64  # videos whose windows are compared bit for bit at the end


class MigrateError(IndexFolderError):
    """The copy does not match its source (counts or sampled vectors)."""


@dataclass
class MigrateReport:
    """What ``migrate`` did."""

    source: str
    target: str
    collection: str
    copied: int = 0
    skipped: int = 0  # already in the collection, same content (a rerun)
    removed: int = 0
    windows_copied: int = 0
    num_videos: int = 0
    num_windows: int = 0
    orphans_deleted: int = 0
    verified_videos: int = 0
    elapsed: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _same(a: Any, b: Any) -> bool:
    return (a.path, a.hash, int(a.num_windows), int(a.size), float(a.mtime)) == (
        b.path, b.hash, int(b.num_windows), int(b.size), float(b.mtime))


def migrate(source: str | os.PathLike[str], uri: str, *, collection: str = DEFAULT_COLLECTION,
            batch_windows: int = 20000, progress: Callable[[MigrateReport, int], None] | None = None,
            verify_videos: int = VERIFY_VIDEOS) -> MigrateReport:
    """Copy the index folder ``source`` into the collection ``collection`` at ``uri``;
    ``progress(report, total_videos)`` after each batch. Raises ``MigrateError`` when the check fails."""
    if batch_windows < 1:
        raise ValueError(f"batch_windows must be >= 1, got {batch_windows}")
    t0 = time.perf_counter()
    with IndexReader.open(source) as src:
        snap = src.snapshot
        dst = MilvusIndex.create_for(uri, src.weights_id, WindowSettings.from_dict(src.settings),
                                     weights_name=src.meta.get("weights_name"), check=src.settings, roots=src.roots,
                                     collection=collection, dim=src.dim)
        try:
            report = MigrateReport(source=src.directory, target=dst.directory, collection=collection)
            ws = src.meta.get("weights_source")
            if ws and dst.meta.get("weights_source") != ws:
                dst.record_weights_source(ws)
            rows = sorted(snap.records.values(), key=lambda r: int(r.row_start))
            gone = [v for v in (r.id for r in dst.rows()) if v not in snap.records]
            if gone:
                dst.remove_videos(gone)
                report.removed = len(gone)
            batch: list[Any] = []
            n = 0

            def flush() -> None:
                if not batch:
                    return
                items = []
                for r in batch:
                    starts, ends, emb = snap.windows(r.id)
                    items.append((r.path, SimpleNamespace(embeddings=emb, starts=starts, ends=ends,
                                                          duration=float(r.duration)), int(r.size), float(r.mtime), r.hash))
                dst.add_videos(items, ids=[r.id for r in batch])
                report.copied += len(batch)
                report.windows_copied += sum(int(r.num_windows) for r in batch)
                batch.clear()
                if progress is not None:
                    progress(report, len(rows))

            for r in rows:
                if dst.has_row(r.id) and _same(dst.row(r.id), r):
                    report.skipped += 1
                    continue
                batch.append(r)
                n += int(r.num_windows)
                if n >= batch_windows:
                    flush()
                    n = 0
            flush()
            _verify(src, dst, report, verify_videos)
            report.num_videos, report.num_windows = dst.num_videos, dst.num_live
        finally:
            dst.close()
    report.elapsed = time.perf_counter() - t0
    return report


def _verify(src: IndexReader, dst: MilvusIndex, report: MigrateReport, videos: int) -> None:
    """Counts, then a sample of videos bit for bit; windows without a live record are deleted first."""
    want = src.num_live
    if dst.num_videos != src.num_videos or dst.num_live != want:
        raise MigrateError(f"the collection has {dst.num_videos} videos / {dst.num_live} windows, the folder "
                           f"{src.num_videos} / {want}")
    if dst.count_windows() != want:
        stale = [k for k in dst.window_keys() if not _live(dst, k)]
        dst.delete_windows(stale)
        report.orphans_deleted = len(stale)
        got = dst.count_windows()
        if got != want:
            raise MigrateError(f"the collection holds {got} windows, the folder {want} live ones")
    ids = sorted(src.snapshot.records)
    rng = np.random.default_rng(0)
    pick = ids if len(ids) <= videos else sorted(rng.choice(ids, size=videos, replace=False).tolist())
    for vid in pick:
        a, b = src.windows(vid), dst.windows(vid)
        if not all(np.array_equal(x, y) for x, y in zip(a, b)) or b[2].dtype != np.float32:
            raise MigrateError(f"video {vid} ({dst.row(vid).path}): its windows in the collection differ from the folder's")
    report.verified_videos = len(pick)


def _live(dst: MilvusIndex, key: int) -> bool:
    v, g, _ = key_parts(key)
    return dst.has_row(v) and (dst.generation_of(v) & 0xFFFF) == g
