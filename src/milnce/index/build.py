"""Building an index: finding the videos, recognising unchanged, touched, moved and changed files
by size, mtime and content hash, embedding the rest with progress, pruning, compacting, and the
optional ANN index (``build_index``)."""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from ..errors import UsageError
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
            raise FileNotFoundError(f"no such file or folder: {p}")
    return list(out)


def show_path(path: str) -> str:
    """A path as text that can always be printed (bytes that are not UTF-8 as ``\\xNN``)."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _reason(exc: BaseException, path: str) -> str:
    """An error message without the path (the report shows the path once)."""
    msg = str(exc) or type(exc).__name__
    for p in (path, os.path.basename(path)):
        for sep in (": ", " "):
            if msg.startswith(p + sep):
                msg = msg[len(p) + len(sep):]
    return msg.replace(f" {path}", "").strip() or type(exc).__name__


_PROGRAMMING_ERRORS = (TypeError, AttributeError, NameError, AssertionError, MemoryError, ImportError)


def build_index(paths: Iterable[str | os.PathLike[str]], directory: str | os.PathLike[str], model: Encoder, *,
                prune: bool = False, ann: bool = False, stride: int | None = None, fps: float | None = None,
                num_frames: int | None = None, size: int | None = None, batch_size: int = 4,
                progress: bool = True, recursive: bool = True, retry_errors: bool = False,
                ann_queries: Sequence[str] | None = None, ann_min_windows: int = ANN_MIN_WINDOWS) -> IndexReport:
    """Add the videos under ``paths`` to the index in ``directory`` (created if needed).

    Incremental: unchanged videos (same path, size and mtime; or same content hash) are skipped,
    moved ones are recognised by their content, changed ones are re-embedded; ``prune`` drops
    videos whose file is gone. Window settings default to the index's (new index: the model's
    input conventions, ``WindowSettings.for_model(model)``: 32 frames at 10 fps, 224 px, a window
    every ``stride`` = 16 frames); bad values raise ``UsageError`` before anything is created. Killing it at any point leaves a
    readable index; running it again finishes the job. ``ann``: (re)build the approximate index
    when it is missing, stale or damaged, if the index holds at least ``ann_min_windows`` windows
    (below that exact search takes milliseconds and IVF would only lose recall: ``report.ann``
    says it was skipped). Files or folders that could not be read are in ``report.failed``
    (path, reason without the path) and ``errors.log``.
    """
    t_start = time.perf_counter()
    settings = {k: v for k, v in {"fps": fps, "num_frames": num_frames, "size": size, "stride": stride}.items()
                if v is not None}
    WindowSettings.for_model(model, **settings)  # check the values before creating anything
    if int(batch_size) < 1:
        raise UsageError(f"batch_size must be >= 1, got {batch_size!r}")
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
        s = idx.settings
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

        from ..video.probe import probe_duration  # (imports torch: only when building)

        total_s = sum(probe_duration(p[0]) or 0.0 for p in pending) if progress and pending else 0.0
        bar = _Progress(len(pending), total_s, enabled=progress and bool(pending))
        delay = float(os.environ.get("_MILNCE_INDEX_TEST_DELAY", "0") or 0)
        try:
            for path, size_, mtime, why in pending:
                bar.start(path)
                try:
                    h = file_hash(path)
                except OSError as exc:
                    why = f"cannot read: {exc.strerror or _reason(exc, path)}"
                    idx.record_error(path, why, size_, mtime)
                    report.failed.append((path, why))
                    bar.done(0.0)
                    continue
                vid: int | None = idx._by_path.get(path)
                if vid is not None and idx._records[vid].hash == h:  # touched, same content
                    idx.update_video(vid, size=size_, mtime=mtime)
                    report.unchanged += 1
                    bar.done(0.0)
                    continue
                if why == "moved?":
                    match = [v for v in missing_by_size.get(size_, []) if v in idx._records and idx._records[v].hash == h]
                    if match:
                        old_path = idx._records[match[0]].path
                        idx.update_video(match[0], path=path, size=size_, mtime=mtime)
                        missing_by_size[size_].remove(match[0])
                        report.moved.append((old_path, path))
                        bar.done(0.0)
                        continue
                t0 = time.perf_counter()
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", RuntimeWarning)
                        emb = model.encode_video_file(path, fps=s["fps"], num_frames=s["num_frames"], size=s["size"],
                                                      stride=s["stride"], batch_size=batch_size,
                                                      progress=bar.bar is not None)  # windows of this video
                    if len(emb) == 0:
                        raise ValueError("no frames could be decoded")
                except _PROGRAMMING_ERRORS:
                    raise
                except Exception as exc:  # noqa: BLE001 - unreadable video: log it, go on
                    reason = _reason(exc, path)
                    if vid is not None:  # changed and now unreadable: drop its stale windows
                        idx.remove_videos([vid])
                    idx.record_error(path, reason, size_, mtime)
                    report.failed.append((path, reason))
                    bar.done(0.0)
                    continue
                idx.add_video(path, emb, size=size_, mtime=mtime, content_hash=h)
                dt = time.perf_counter() - t0
                dur = float(emb.duration) if emb.duration == emb.duration else float(emb.ends[-1])
                report.embed_seconds += dt
                report.video_seconds += dur
                report.windows_added += len(emb)
                (report.updated if why == "changed" else report.added).append(path)
                bar.done(dur)
                if delay:
                    time.sleep(delay)
        finally:
            bar.close()

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
                qs = None
                if ann_queries is None:
                    words = [str(w) for w in model.tokenizer.vocab[:5000]]
                    rng = np.random.default_rng(0)
                    pick = rng.choice(len(words), size=min(200, len(words)), replace=False)
                    ann_queries = [" ".join(rng.choice(words, size=2)) if j % 2 else words[int(p)]
                                   for j, p in enumerate(pick)]
                if ann_queries:
                    qs = model.encode_text(list(ann_queries)).detach().cpu().numpy().astype(np.float32)
                report.ann = idx.build_ann(queries=qs, progress=progress)
        report.num_videos = idx.num_videos
        report.num_windows = idx.num_live
    finally:
        idx.close()
    report.elapsed = time.perf_counter() - t_start
    return report


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
                            dynamic_ncols=True)

    def start(self, path: str) -> None:
        if self.bar is not None:
            self.bar.set_description(f"videos {self.i}/{self.n}", refresh=False)
            self.bar.set_postfix_str(os.path.basename(path)[:30])

    def done(self, seconds: float) -> None:
        self.i += 1
        if self.bar is not None:
            self.bar.set_description(f"videos {self.i}/{self.n}", refresh=False)
            hours = seconds / 3600
            if self.bar.total is not None and self.bar.n + hours > self.bar.total:
                self.bar.total = self.bar.n + hours
            self.bar.update(hours)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
