"""Building an index: finding the videos, recognising unchanged, touched, moved and changed files
by size, mtime and content hash, embedding the rest with progress, pruning, compacting, and the
optional ANN index (``build_index``)."""

from __future__ import annotations

import logging
import math
import os
import sqlite3
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from ..errors import MilnceError, MissingFileError, UsageError
from ..printable import show_path
from ..protocols import Encoder
from ..runoptions import RunOptions, resolve_run_options
from ..video import VideoJob, VideoWindows, run_jobs, walk_videos
from ..windows import WindowSettings
from .ann import ANN_MIN_WINDOWS
from .backends import AnyWriter, create_index, is_milvus_uri, open_index
from .database import connect, read_meta
from .ingest import Progress, file_hash, finish, reason_text
from .ingest import reason as exc_reason
from .layout import DB_NAME, user_path
from .records import IndexReport
from .transcript_ingest import TranscriptIngest
from .verify import check_settings

__all__ = ["build_index", "index_window", "stored_window", "find_videos"]

log = logging.getLogger("milnce.index")

Pending = tuple[str, int, float, str, str]  # path, size, mtime, why ("changed", "moved?", "new"), content hash


def _warn_folder(where: str, reason: str) -> None:
    log.warning("%s: %s", show_path(where), reason)


def find_videos(paths: Iterable[str | os.PathLike[str]], recursive: bool = True,
                exclude: Sequence[str] = (), on_error: Callable[[str, str], None] | None = None) -> list[str]:
    """Video files under ``paths`` (absolute, sorted, unique; a leading ``~`` is expanded). Files
    named explicitly are kept whatever their extension; folders are walked for known video
    extensions, skipping hidden entries and the folders in ``exclude``. A folder that cannot be
    read is passed to ``on_error(path, reason)`` (default: a warning on the ``milnce.index``
    logger), never skipped silently."""
    out: dict[str, None] = {}
    excl = {user_path(e) for e in exclude}

    paths = list(paths)
    roots = [user_path(p) for p in paths]  # links may lead anywhere inside the folders given
    for p in paths:
        ap = user_path(p)
        if os.path.isfile(ap):
            out[ap] = None
        elif os.path.isdir(ap):
            found = list(walk_videos(ap, roots=roots, exclude=excl, recursive=recursive, on_error=on_error or _warn_folder))
            for f in sorted(found):
                out[f] = None
        else:
            raise MissingFileError(f"no such file or folder: {p}")
    return list(out)


def build_index(paths: Iterable[str | os.PathLike[str]], directory: str | os.PathLike[str], model: Encoder, *,
                window: WindowSettings | None = None, prune: bool = False, ann: bool | str = False,
                run: RunOptions | None = None, progress: bool = True, recursive: bool = True,
                retry_errors: bool = False, ann_queries: Sequence[str] | None = None,
                ann_min_windows: int = ANN_MIN_WINDOWS, roots: Sequence[str | os.PathLike[str]] = (),
                allow_gaps: bool = False, collection: str | None = None,
                subtitle_langs: Sequence[str] | None = None) -> IndexReport:
    """Add the videos under ``paths`` to the index in ``directory`` (created if needed). ``paths``
    (and ``roots``) are recorded as the index's collection roots (``milnce.index.roots``).

    Incremental: unchanged videos (same path, size and mtime; or same content hash) are skipped,
    moved ones are recognised by their content, changed ones are re-embedded; ``prune`` drops
    videos whose file is gone. ``window``: the index's ``WindowSettings``, passed as it is to the
    pipeline and stored by a new index (default: an existing index's own, a new index's
    ``WindowSettings.for_model(model)``: 32 frames at 10 fps, 224 px, a window every ``stride``
    frames, default half the window; ``index_window`` resolves the command-line options against
    an existing index); an existing index built with other windows raises ``IndexMismatchError``,
    windows the model cannot take and a stride longer than the window (gaps, unless
    ``allow_gaps``) raise ``UsageError``, before anything is created. Videos are embedded by the
    extraction pipeline (``milnce.extract.run_jobs``) with ``run`` (``milnce.runoptions.RunOptions``:
    ``workers`` decoding processes, default the cores available minus one, 0 = a thread of this
    process; windows of several videos in each model call of ``batch_size`` windows, default
    ``DEFAULT_BATCH_CPU`` on the CPU, ``DEFAULT_BATCH_CUDA`` on CUDA, see ``milnce.runoptions``);
    each video is committed as soon as its last window is embedded. Killing it
    at any point leaves a readable index; running it again finishes the job. ``ann``: (re)build
    the approximate index when it is missing, stale or damaged, if the index holds at least
    ``ann_min_windows`` windows (below that exact search takes milliseconds and IVF would only
    lose recall: ``report.ann`` says it was skipped). Files or folders that could not be read are
    in ``report.failed`` (path, reason without the path) and ``errors.log``. ``directory`` may name a
    Milvus collection (``milnce.index.backends``: a ``.db`` file or ``http(s)://``; ``collection``: its
    name). Subtitles (sidecar
    ``NAME[.LANG].vtt/.srt`` and text streams inside the videos; ``subtitle_langs``: only those
    languages, ``()``: none) are stored with each video (``milnce.index.transcripts``); an unchanged
    video whose subtitle files changed gets its cues replaced without being embedded again.
    """
    t_start = time.perf_counter()
    window = _resolve_window(directory, model, window, allow_gaps)  # before creating anything
    run = resolve_run_options(device=model.device) if run is None else run  # the defaults for the model's device
    paths = list(paths)
    unreadable: list[tuple[str, str]] = []
    files = find_videos(paths, recursive=recursive, exclude=[os.fspath(directory)],  # before creating anything
                        on_error=lambda p, r: unreadable.append((p, r)))
    idx = create_index(directory, model, window, roots=[*paths, *roots], collection=collection)  # the collection roots (milnce.index.roots)
    report = IndexReport(directory=idx.directory)
    subs = TranscriptIngest(idx, report, subtitle_langs)
    try:
        _record_unreadable(idx, report, unreadable)
        missing_by_size = _missing_by_size(idx, set(files))
        pending = _pending_files(idx, files, report, subs, missing_by_size, retry_errors=retry_errors)
        if pending:
            _embed_pending(idx, model, window, pending, missing_by_size, report, run=run, progress=progress, subs=subs)
        finish(idx, report, prune=prune, ann=ann, ann_min_windows=ann_min_windows, progress=progress,
               queries=lambda: _ann_queries(model, ann_queries))
        subs.finish()
    finally:
        idx.close()
    report.elapsed = time.perf_counter() - t_start
    return report


def _resolve_window(directory: str | os.PathLike[str], model: Encoder, window: WindowSettings | None,
                    allow_gaps: bool) -> WindowSettings:
    """The windows ``build_index`` embeds with: ``window`` checked (coverage unless ``allow_gaps``),
    or the index's own (``index_window``); ``UsageError`` for windows the model cannot take."""
    if window is not None and not isinstance(window, WindowSettings):
        raise UsageError(f"window must be a WindowSettings, got {type(window).__name__}")
    if window is None:
        window = index_window(directory, model)
    elif not allow_gaps:
        window.check_coverage()
    _check_window(model, window)
    return window


def _record_unreadable(idx: AnyWriter, report: IndexReport, unreadable: list[tuple[str, str]]) -> None:
    """Log the folders ``find_videos`` could not read (warning, ``errors.log``, ``report.failed``)."""
    for where, why in unreadable:
        log.warning("%s: %s", show_path(where), why)
        idx.log_error(where, why)
        report.failed.append((where, why))


def _missing_by_size(idx: AnyWriter, wanted: set[str]) -> dict[int, list[int]]:
    """Ids of the indexed videos whose file is gone (and not among ``wanted``), by file size: the
    candidates a new file of the same size may have been moved from."""
    missing: dict[int, list[int]] = {}
    for r in idx.rows():
        if r.path not in wanted and not os.path.exists(r.path):
            missing.setdefault(int(r.size), []).append(r.id)
    return missing


def _pending_files(idx: AnyWriter, files: list[str], report: IndexReport, subs: TranscriptIngest,
                   missing_by_size: dict[int, list[int]], *, retry_errors: bool) -> list[tuple[str, int, float, str]]:
    """``(path, size, mtime, why)`` of the files to hash or embed, ``why`` "changed", "moved?"
    (a gone video had its size) or "new"; unchanged files (same size and mtime), files that
    failed before unchanged (unless ``retry_errors``) and files that cannot be stat'ed are
    settled in ``report`` here."""
    known_errors = dict(idx.errors())
    pending: list[tuple[str, int, float, str]] = []
    for f in files:
        try:
            st = os.stat(f)
        except OSError as exc:
            report.failed.append((f, f"cannot stat: {exc.strerror or exc_reason(exc, f)}"))
            continue
        size_, mtime = int(st.st_size), float(st.st_mtime)
        known = idx.video_id_of(f)
        if known is not None:
            r = idx.row(known)
            if int(r.size) == size_ and float(r.mtime) == mtime:
                report.unchanged += 1
                subs.refresh(f, known, r.hash)
                continue
            pending.append((f, size_, mtime, "changed"))
            continue
        err = idx.error_entry(f)
        if err is not None and not retry_errors and err == (size_, mtime):
            report.previously_failed += 1
            report.skipped_failures.append((f, known_errors.get(f, "failed before")))
            continue
        pending.append((f, size_, mtime, "moved?" if size_ in missing_by_size else "new"))
    return pending


def _check_window(model: Encoder, window: WindowSettings) -> None:
    """Refuse windows the model cannot take (its space-to-depth stem needs even frames and sides)
    before the index folder is created."""
    if getattr(model.info, "space_to_depth", True) and (window.num_frames % 2 or window.size % 2):
        raise UsageError(f"these weights need an even number of frames and an even frame size, got --num-frames "
                         f"{window.num_frames} --size {window.size} (the published setting: 32 frames of 224 px)")


def stored_window(directory: str | os.PathLike[str], collection: str | None = None) -> WindowSettings | None:
    """The windows an existing index in ``directory`` (or Milvus collection ``collection`` at that
    URI) records (``None``: no index there, or one that cannot be read here: opening it for
    writing says why)."""
    if is_milvus_uri(directory):
        try:
            with open_index(directory, readonly=True, collection=collection) as ix:
                return WindowSettings.from_dict(ix.settings)
        except (MilnceError, KeyError, TypeError, ValueError):
            return None
    db = os.path.join(user_path(directory), DB_NAME)
    if not os.path.isfile(db):
        return None
    try:
        con = connect(db, readonly=True)
        try:
            meta = read_meta(con, os.fspath(directory))
        finally:
            con.close()
        return WindowSettings.from_dict(meta["settings"])
    except (sqlite3.Error, MilnceError, KeyError, TypeError, ValueError, AttributeError):
        return None


def index_window(directory: str | os.PathLike[str], model: Encoder, *, allow_gaps: bool = False,
                 collection: str | None = None, **given: Any) -> WindowSettings:
    """The windows ``build_index`` gets from the window options ``given`` (``fps``, ``num_frames``,
    ``size``, ``stride``; ``None`` = not given): an existing index's own, which the given ones
    must match (``IndexMismatchError``), else ``WindowSettings.for_model(model, **given)``. The
    one place ``milnce index`` and ``milnce demo`` turn their options into a ``WindowSettings``.
    ``collection``: the collection's name where ``directory`` is a Milvus URI."""
    have = stored_window(directory, collection)
    if have is None:
        return WindowSettings.for_model(model, allow_gaps=allow_gaps, **given)
    check_settings(user_path(directory), have.to_dict(), {k: v for k, v in given.items() if v is not None})
    return have


def _embed_pending(idx: AnyWriter, model: Encoder, window: WindowSettings, pending: list[tuple[str, int, float, str]],
                   missing_by_size: dict[int, list[int]], report: IndexReport, *, run: RunOptions,
                   progress: bool, subs: TranscriptIngest) -> None:
    """Hash the pending files (touched and moved ones need no model), embed the rest through the
    pipeline and commit each video as its result arrives (in any order): its rows are appended and
    fsynced, then its record is committed (``Index.add_video``)."""
    from ..video import probe_duration  # (imports torch: only when building)

    total_s = sum(probe_duration(p[0]) or 0.0 for p in pending) if progress else 0.0
    bar = Progress(len(pending), total_s, enabled=progress)
    todo: dict[int, Pending] = {}  # job key -> the file

    def jobs() -> Iterator[VideoJob]:
        """The videos to embed; the others are settled here (read lazily by the pipeline, so
        hashing overlaps with decoding and embedding)."""
        for key, (path, size_, mtime, why) in enumerate(pending):
            try:
                h = file_hash(path)
            except OSError as exc:
                reason = f"cannot read: {exc.strerror or exc_reason(exc, path)}"
                idx.record_error(path, reason, size_, mtime)
                report.failed.append((path, reason))
                bar.done(0.0, path)
                continue
            if _touched_or_moved(idx, (path, size_, mtime, why, h), missing_by_size, report, subs):
                bar.done(0.0, path)
                continue
            todo[key] = (path, size_, mtime, why, h)
            yield VideoJob(path, key=key)

    t0 = time.perf_counter()
    results = run_jobs(model, jobs(), window, features=False, options=run)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            for res in results:
                assert isinstance(res.key, int)  # the keys given in jobs()
                entry = todo.pop(res.key)
                bar.done(_commit_result(idx, res, entry, report, subs), entry[0])
    finally:
        results.close()  # stops the decoding processes now, also on errors and Ctrl-C
        bar.close()
        report.embed_seconds += time.perf_counter() - t0


def _touched_or_moved(idx: AnyWriter, entry: Pending, missing_by_size: dict[int, list[int]], report: IndexReport,
                      subs: TranscriptIngest) -> bool:
    """Settle a pending file that needs no model: touched (its video's content hash) or moved
    (the hash of a gone video of its size; that video takes the new path). Whether it was."""
    path, size_, mtime, why, h = entry
    vid = idx.video_id_of(path)
    if vid is not None and idx.row(vid).hash == h:  # touched, same content
        idx.update_video(vid, size=size_, mtime=mtime)
        report.unchanged += 1
        subs.refresh(path, vid, h)
        return True
    if why == "moved?":
        match = [v for v in missing_by_size.get(size_, []) if idx.has_row(v) and idx.row(v).hash == h]
        if match:
            old_path = idx.row(match[0]).path
            idx.update_video(match[0], path=path, size=size_, mtime=mtime)
            subs.refresh(path, match[0], h)
            missing_by_size[size_].remove(match[0])
            report.moved.append((old_path, path))
            return True
    return False


def _commit_result(idx: AnyWriter, res: VideoWindows, entry: Pending, report: IndexReport, subs: TranscriptIngest) -> float:
    """Commit one embedded video (its windows and subtitles; counted in ``report``), or record why
    it failed (dropping the stale windows of a changed video); the seconds it adds to the progress."""
    path, size_, mtime, why, h = entry
    if res.error is not None or len(res) == 0:
        reason = reason_text(res.error or "no frames could be decoded", path)
        vid = idx.video_id_of(path)
        if vid is not None:  # changed and now unreadable: drop its stale windows
            idx.remove_videos([vid])
        idx.record_error(path, reason, size_, mtime)
        report.failed.append((path, reason))
        return 0.0
    got = subs.read(path, h)
    idx.add_videos([(path, res, size_, mtime, h)], transcripts=None if got is None else {path: got})
    dur = float(res.duration) if math.isfinite(res.duration) else float(res.ends[-1])
    report.video_seconds += dur
    report.windows_added += len(res)
    (report.updated if why == "changed" else report.added).append(path)
    return dur


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


