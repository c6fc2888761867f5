"""Building an index: finding the videos, recognising unchanged, touched, moved and changed files
by size, mtime and content hash, embedding the rest with progress, pruning, compacting, and the
optional ANN index (``build_index``)."""

from __future__ import annotations

import hashlib
import logging
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import MissingFileError, UsageError
from ..protocols import Encoder
from ..windows import WindowSettings
from .ann import ANN_MIN_WINDOWS
from .layout import user_path
from .records import IndexReport
from .store import Index

__all__ = ["build_index", "find_videos", "file_hash", "show_path", "VIDEO_EXTENSIONS"]

log = logging.getLogger("milnce.index")

VIDEO_EXTENSIONS = frozenset({
    ".mp4", ".m4v", ".mkv", ".webm", ".avi", ".mov", ".mpg", ".mpeg", ".wmv", ".flv", ".gif",
    ".3gp", ".ogv", ".ts", ".mts", ".m2ts", ".vob", ".qt",
})
_COMPACT_DEAD_SHARE = 0.25


def file_hash(path: str, chunk: int = 1 << 20) -> str:
    """Content hash (BLAKE2b-128 of the whole file) used to recognise moved or touched videos."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()



def find_videos(paths: Iterable[str | os.PathLike[str]], recursive: bool = True,
                exclude: Sequence[str] = (), on_error: Callable[[str, str], None] | None = None) -> list[str]:
    """Video files under ``paths`` (absolute, sorted, unique; a leading ``~`` is expanded). Files
    named explicitly are kept whatever their extension; folders are walked for known video
    extensions, skipping hidden entries and the folders in ``exclude``. A folder that cannot be
    read is passed to ``on_error(path, reason)`` (default: a warning on the ``milnce.index``
    logger), never skipped silently."""
    out: dict[str, None] = {}
    excl = {user_path(e) for e in exclude}

    def report(exc: OSError) -> None:
        where = exc.filename if isinstance(exc.filename, str) else str(exc.filename)
        reason = f"cannot read the folder: {exc.strerror or exc}"
        if on_error is not None:
            on_error(where, reason)
        else:
            log.warning("%s: %s", show_path(where), reason)

    for p in paths:
        ap = user_path(p)
        if os.path.isfile(ap):
            out[ap] = None
        elif os.path.isdir(ap):
            found = []
            for root, dirs, files in os.walk(ap, followlinks=False, onerror=report):
                dirs[:] = sorted(d for d in dirs if not d.startswith(".") and os.path.join(root, d) not in excl)
                if not recursive:
                    dirs[:] = []
                for name in files:
                    if name.startswith("."):
                        continue
                    if os.path.splitext(name)[1].lower() in VIDEO_EXTENSIONS:
                        found.append(os.path.join(root, name))
            for f in sorted(found):
                out[f] = None
        else:
            raise MissingFileError(f"no such file or folder: {p}")
    return list(out)


def show_path(path: str) -> str:
    """A path as text that can always be printed (bytes that are not UTF-8 as ``\\xNN``)."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _reason(exc: BaseException, path: str) -> str:
    """An error message without the path (the report shows the path once)."""
    return _reason_text(str(exc), path) if str(exc) else type(exc).__name__


def _reason_text(msg: str, path: str) -> str:
    """``msg`` without ``path`` (the report shows the path once)."""
    for p in (path, os.path.basename(path)):
        for sep in (": ", " "):
            if msg.startswith(p + sep):
                msg = msg[len(p) + len(sep):]
    return msg.replace(f" {path}", "").strip() or "unreadable"


def build_index(paths: Iterable[str | os.PathLike[str]], directory: str | os.PathLike[str], model: Encoder, *,
                prune: bool = False, ann: bool = False, stride: int | None = None, fps: float | None = None,
                num_frames: int | None = None, size: int | None = None, batch_size: int | None = None,
                workers: int | None = None, progress: bool = True, recursive: bool = True,
                retry_errors: bool = False, ann_queries: Sequence[str] | None = None,
                ann_min_windows: int = ANN_MIN_WINDOWS) -> IndexReport:
    """Add the videos under ``paths`` to the index in ``directory`` (created if needed).

    Incremental: unchanged videos (same path, size and mtime; or same content hash) are skipped,
    moved ones are recognised by their content, changed ones are re-embedded; ``prune`` drops
    videos whose file is gone. Window settings default to the index's (new index: the model's
    input conventions, ``WindowSettings.for_model(model)``: 32 frames at 10 fps, 224 px, a window
    every ``stride`` = 16 frames); bad values raise ``UsageError`` before anything is created.
    Videos are embedded by the extraction pipeline (``milnce.extract.run_jobs``): ``workers``
    decoding processes (default: the cores available minus one; 0 = a thread of this process),
    windows of several videos in each model call of ``batch_size`` windows (default 4 on the
    CPU, 64 on CUDA); each video is committed as soon as its last window is embedded. Killing it
    at any point leaves a readable index; running it again finishes the job. ``ann``: (re)build
    the approximate index when it is missing, stale or damaged, if the index holds at least
    ``ann_min_windows`` windows (below that exact search takes milliseconds and IVF would only
    lose recall: ``report.ann`` says it was skipped). Files or folders that could not be read are
    in ``report.failed`` (path, reason without the path) and ``errors.log``.
    """
    t_start = time.perf_counter()
    settings = {k: v for k, v in {"fps": fps, "num_frames": num_frames, "size": size, "stride": stride}.items()
                if v is not None}
    WindowSettings.for_model(model, **settings)  # check the values before creating anything
    _check_run_args(batch_size, workers)
    paths = list(paths)
    unreadable: list[tuple[str, str]] = []
    files = find_videos(paths, recursive=recursive, exclude=[os.fspath(directory)],  # before creating anything
                        on_error=lambda p, r: unreadable.append((p, r)))
    idx = Index.create(directory, model, settings)
    report = IndexReport(directory=idx.directory)
    try:
        for where, why in unreadable:
            log.warning("%s: %s", show_path(where), why)
            idx.log_error(where, why)
            report.failed.append((where, why))
        wanted = set(files)
        pending: list[tuple[str, int, float, str]] = []  # path, size, mtime, why
        missing_by_size: dict[int, list[int]] = {}
        for old_id, r in idx._records.items():
            if r.path not in wanted and not os.path.exists(r.path):
                missing_by_size.setdefault(int(r.size), []).append(old_id)
        for f in files:
            try:
                st = os.stat(f)
            except OSError as exc:
                report.failed.append((f, f"cannot stat: {exc.strerror or _reason(exc, f)}"))
                continue
            size_, mtime = int(st.st_size), float(st.st_mtime)
            known = idx._by_path.get(f)
            if known is not None:
                r = idx._records[known]
                if int(r.size) == size_ and float(r.mtime) == mtime:
                    report.unchanged += 1
                    continue
                pending.append((f, size_, mtime, "changed"))
                continue
            err = idx.error_entry(f)
            if err is not None and not retry_errors and err == (size_, mtime):
                report.previously_failed += 1
                continue
            pending.append((f, size_, mtime, "moved?" if size_ in missing_by_size else "new"))
        if pending:
            _embed_pending(idx, model, pending, missing_by_size, report, batch_size=batch_size, workers=workers,
                           progress=progress)
        _finish(idx, report, prune=prune, ann=ann, ann_min_windows=ann_min_windows, progress=progress,
                queries=lambda: _ann_queries(model, ann_queries))
    finally:
        idx.close()
    report.elapsed = time.perf_counter() - t_start
    return report


def _check_run_args(batch_size: int | None, workers: int | None) -> None:
    if batch_size is not None and (isinstance(batch_size, bool) or int(batch_size) < 1):
        raise UsageError(f"batch_size must be >= 1, got {batch_size!r}")
    if workers is not None and (isinstance(workers, bool) or int(workers) < 0):
        raise UsageError(f"workers must be >= 0, got {workers!r}")


@dataclass
class _Windows:
    """One video's windows as ``Index.add_video`` stores them (from a pipeline ``JobResult``)."""

    starts: np.ndarray
    ends: np.ndarray
    embeddings: np.ndarray
    duration: float

    def __len__(self) -> int:
        return len(self.starts)


def _embed_pending(idx: Index, model: Encoder, pending: list[tuple[str, int, float, str]],
                   missing_by_size: dict[int, list[int]], report: IndexReport, *, batch_size: int | None,
                   workers: int | None, progress: bool) -> None:
    """Hash the pending files (touched and moved ones need no model), embed the rest through the
    pipeline and commit each video as its result arrives (in any order): its rows are appended and
    fsynced, then its record is committed (``Index.add_video``)."""
    from ..extract import VideoJob, run_jobs
    from ..video.probe import probe_duration  # (imports torch: only when building)

    total_s = sum(probe_duration(p[0]) or 0.0 for p in pending) if progress else 0.0
    bar = _Progress(len(pending), total_s, enabled=progress)
    delay = float(os.environ.get("_MILNCE_INDEX_TEST_DELAY", "0") or 0)  # tests: a slow run to kill
    todo: dict[int, tuple[str, int, float, str, str]] = {}  # job key -> path, size, mtime, why, hash

    def jobs() -> Iterator[VideoJob]:
        """The videos to embed; the others are settled here (read lazily by the pipeline, so
        hashing overlaps with decoding and embedding)."""
        for key, (path, size_, mtime, why) in enumerate(pending):
            try:
                h = file_hash(path)
            except OSError as exc:
                reason = f"cannot read: {exc.strerror or _reason(exc, path)}"
                idx.record_error(path, reason, size_, mtime)
                report.failed.append((path, reason))
                bar.done(0.0, path)
                continue
            vid = idx._by_path.get(path)
            if vid is not None and idx._records[vid].hash == h:  # touched, same content
                idx.update_video(vid, size=size_, mtime=mtime)
                report.unchanged += 1
                bar.done(0.0, path)
                continue
            if why == "moved?":
                match = [v for v in missing_by_size.get(size_, []) if v in idx._records and idx._records[v].hash == h]
                if match:
                    old_path = idx._records[match[0]].path
                    idx.update_video(match[0], path=path, size=size_, mtime=mtime)
                    missing_by_size[size_].remove(match[0])
                    report.moved.append((old_path, path))
                    bar.done(0.0, path)
                    continue
            todo[key] = (path, size_, mtime, why, h)
            yield VideoJob(path, key=key)

    window = WindowSettings.from_dict(idx.settings)
    if batch_size is None:  # measured on a 2-core CPU: 4 keeps up with the model better than 8
        batch_size = 64 if model.device.type == "cuda" else 4
    t0 = time.perf_counter()
    slept = 0.0
    results = run_jobs(model, jobs(), window, features=False, batch_size=batch_size, workers=workers)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            for res in results:
                assert isinstance(res.key, int)  # the keys given in jobs()
                path, size_, mtime, why, h = todo.pop(res.key)
                if res.error is not None or len(res) == 0:
                    reason = _reason_text(res.error or "no frames could be decoded", path)
                    vid = idx._by_path.get(path)
                    if vid is not None:  # changed and now unreadable: drop its stale windows
                        idx.remove_videos([vid])
                    idx.record_error(path, reason, size_, mtime)
                    report.failed.append((path, reason))
                    bar.done(0.0, path)
                    continue
                emb = _Windows(res.starts, res.ends, res.video_embedding, res.duration)
                idx.add_video(path, emb, size=size_, mtime=mtime, content_hash=h)
                dur = float(res.duration) if math.isfinite(res.duration) else float(res.ends[-1])
                report.video_seconds += dur
                report.windows_added += len(res)
                (report.updated if why == "changed" else report.added).append(path)
                bar.done(dur, path)
                if delay:
                    time.sleep(delay)
                    slept += delay
    finally:
        results.close()  # stops the decoding processes now, also on errors and Ctrl-C
        bar.close()
        report.embed_seconds += time.perf_counter() - t0 - slept


def _ann_queries(model: Encoder, ann_queries: Sequence[str] | None) -> np.ndarray | None:
    """Text embeddings the ANN index is tuned on (default: words and pairs of the vocabulary)."""
    if ann_queries is None:
        words = [str(w) for w in model.tokenizer.vocab[:5000]]
        rng = np.random.default_rng(0)
        pick = rng.choice(len(words), size=min(200, len(words)), replace=False)
        ann_queries = [" ".join(rng.choice(words, size=2)) if j % 2 else words[int(p)] for j, p in enumerate(pick)]
    if not ann_queries:
        return None
    return model.encode_text(list(ann_queries)).detach().cpu().numpy().astype(np.float32)


def _finish(idx: Index, report: IndexReport, *, prune: bool, ann: bool, ann_min_windows: int, progress: bool,
            queries: Callable[[], np.ndarray | None]) -> None:
    """Prune, compact when dead rows pile up, (re)build the ANN index, fill the report's totals."""
    if prune:
        gone = [vid for vid, r in idx._records.items() if not os.path.exists(r.path)]
        report.pruned = [idx._records[v].path for v in gone]
        idx.remove_videos(gone)
    if idx.num_rows and (idx.num_rows - idx.num_live) > _COMPACT_DEAD_SHARE * idx.num_rows:
        report.compacted = idx.compact()
    if ann and idx.num_live < ann_min_windows:
        report.ann = {"skipped": True, "windows": idx.num_live, "min_windows": int(ann_min_windows),
                      "reason": f"the index has {idx.num_live:,} windows, fewer than {int(ann_min_windows):,}: "
                                "exact search is fast there, so no ANN index was built (searches stay exact; "
                                "--ann-min-windows N to build one anyway)"}
    elif ann:
        info = idx.meta.get("ann")
        fresh = info and info.get("rows") == idx.num_rows and idx.ann_status()["state"] == "ok"
        if fresh:
            report.ann = info
        elif idx.num_live:
            report.ann = idx.build_ann(queries=queries(), progress=progress)
    report.num_videos = idx.num_videos
    report.num_windows = idx.num_live


class _Progress:
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
                self.bar.set_postfix_str(os.path.basename(path)[:30], refresh=False)
            hours = seconds / 3600
            if self.bar.total is not None and self.bar.n + hours > self.bar.total:
                self.bar.total = self.bar.n + hours
            self.bar.update(hours)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
