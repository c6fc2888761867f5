"""Building an index from an extraction's feature files, without the model (``index_features``):
extract on many GPUs (``milnce extract``), search on one box.

The feature files carry everything the index needs: the windows' embeddings and times, the
window settings, the weights fingerprint (recorded as the index's ``weights_id``, so a later
``milnce search`` with other weights is refused as for any index) and the source video's path,
size and mtime (the incremental skip of ``milnce index``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import MilnceError, UsageError
from ..printable import show_path
from ..video import VideoWindows
from ..windows import WindowSettings
from .ann import ANN_MIN_WINDOWS
from .ingest import Progress, check_finite, file_hash, finish, reason_text
from .layout import DB_NAME
from .records import IndexReport
from .roots import inside_roots
from .transcript_ingest import TranscriptIngest
from .writer import Index

__all__ = ["index_features", "FeaturesMismatchError"]

log = logging.getLogger("milnce.index")

_COMMIT_VIDEOS = 256  # videos per transaction (each commit fsyncs the rows, then the database)
_COMMIT_WINDOWS = 1 << 16


class FeaturesMismatchError(UsageError):
    """The feature files were made with different settings or weights, or with windows an index
    does not hold (a time range, another padding)."""


def _identity(meta: dict[str, Any]) -> str:
    """What must agree across the feature files of one index: windows, weights, precision."""
    return json.dumps({k: meta.get(k) for k in ("settings", "weights", "precision")}, sort_keys=True)


def _survey(features_dir: str) -> tuple[dict[str, Any], list[tuple[str, dict[str, Any]]], list[tuple[str, str]]]:
    """Read every feature file's metadata (not its arrays): the common metadata, the files with
    theirs, and the files that are not readable feature files."""
    from ..extract import feature_file_paths, inspect_meta

    files: list[tuple[str, dict[str, Any]]] = []
    bad: list[tuple[str, str]] = []
    seen: dict[str, str] = {}
    for file in feature_file_paths(features_dir):
        meta, why = inspect_meta(file)
        if meta is None:
            bad.append((file, f"unreadable feature file: {why}"))
            continue
        key = _identity(meta)
        if seen and key not in seen:
            (other_key, other_file), = list(seen.items())[:1]
            raise FeaturesMismatchError(
                f"{features_dir} mixes features of different settings or weights: {show_path(other_file)} "
                f"has {other_key}, {show_path(file)} has {key}; index each kind into its own folder "
                "(extract into one --out folder per setting)")
        seen.setdefault(key, file)
        files.append((file, meta))
    if not files and bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        why = bad[0][1].removeprefix("unreadable feature file: ")
        raise UsageError(f"{features_dir}: no readable milnce feature file; {show_path(bad[0][0])}: {why}{more}")
    if not files:
        raise UsageError(f"{features_dir}: no milnce feature files (.npz from 'milnce extract') in this folder")
    return files[0][1], files, bad


def _video_settings(meta: dict[str, Any], file: str) -> WindowSettings:
    s = dict(meta.get("settings") or {})
    if s.get("start") is not None or s.get("end") is not None:
        raise FeaturesMismatchError(
            f"{show_path(file)}: the features cover only part of each video (--start/--end); an index holds "
            "whole videos: extract without --start/--end")
    if s.get("pad", "repeat") != "repeat":
        raise FeaturesMismatchError(
            f"{show_path(file)}: the features were extracted with --pad {s.get('pad')}; an index's windows pad "
            "with repeat (the default): extract without --pad")
    try:
        return WindowSettings.from_dict(s)
    except (TypeError, UsageError) as exc:
        raise FeaturesMismatchError(f"{show_path(file)}: unusable window settings in the metadata ({exc})") from exc


def _mtime(mtime_ns: int) -> float:
    """``os.stat().st_mtime`` for a time in nanoseconds (computed as CPython computes it, so that a
    later ``milnce index`` of the same unchanged file sees the same number)."""
    sec, nsec = divmod(int(mtime_ns), 1_000_000_000)
    return sec + nsec * 1e-9


def index_features(features_dir: str | os.PathLike[str], directory: str | os.PathLike[str], *,
                   prune: bool = False, ann: bool | str = False, settings: dict[str, Any] | None = None,
                   progress: bool = True, ann_min_windows: int = ANN_MIN_WINDOWS,
                   roots: Sequence[str | os.PathLike[str]] = (),
                   subtitle_langs: Sequence[str] | None = None) -> IndexReport:
    """Add the videos of an extraction's output folder ``features_dir`` (``milnce extract --out``)
    to the index in ``directory`` (created if needed), without loading the model.

    Every feature file must share the window settings, weights fingerprint and precision
    (``FeaturesMismatchError`` otherwise, before anything is written); an existing index must
    have been built with the same weights and settings (``IndexMismatchError``). ``settings``:
    window options the caller expects (checked against the files'). Videos are recorded under
    the path they were extracted from (their ``source`` path) with its size and mtime, and
    their content hash when the file is here (moved files are then recognised by a later
    ``milnce index``). Unchanged videos are skipped; a video that changed since it was
    extracted is not indexed (``report.failed``: re-run ``milnce extract``); the extraction's
    failures (``failures*.csv``) are reported as failed (and, like ``milnce index``'s, are not
    reported again while the video is unchanged). ``prune``/``ann``: as ``build_index``.

    ``roots``: the folders where the videos live (``milnce.index.roots``; the files need not exist
    here), required unless the index already records roots. A feature file whose source path is
    outside every root is not indexed (``report.failed``): paths inside feature files are untrusted.
    Subtitles: sidecar files next to the feature file, named after it (``NAME.npz`` ->
    ``NAME.vtt``, ``NAME.en.srt`` ...; ``subtitle_langs`` as ``build_index``).
    """
    from ..extract import read_feature_file

    t_start = time.perf_counter()
    src = os.fspath(features_dir)
    files, bad, window, weights = _checked_files(src, settings)
    if not roots and not os.path.isfile(os.path.join(os.fspath(directory), DB_NAME)):
        _no_roots(src)  # before the folder is created
    idx = Index.create_for(directory, weights, window, roots=roots)  # the features' windows, as read
    report = IndexReport(directory=idx.directory)
    subs = TranscriptIngest(idx, report, subtitle_langs, embedded=False)
    try:
        if not idx.roots:
            _no_roots(src)
        for file, why in bad:
            log.warning("%s: %s", show_path(file), why)
            idx.log_error(file, why)
            report.failed.append((file, why))
        todo, done_videos = _plan(idx, files, report, subs)
        _record_failures(idx, src, done_videos, report)
        if todo:
            _add_features(idx, todo, report, progress, read_feature_file, subs)
        finish(idx, report, prune=prune, ann=ann, ann_min_windows=ann_min_windows, progress=progress,
                queries=lambda: None)
        subs.finish()
    finally:
        idx.close()
    report.elapsed = time.perf_counter() - t_start
    return report


def _checked_files(src: str, settings: dict[str, Any] | None
                   ) -> tuple[list[tuple[str, dict[str, Any]]], list[tuple[str, str]], WindowSettings, str]:
    """The feature files of ``src`` with their metadata, the unreadable ones, and the window
    settings and weights fingerprint they share (checked against the caller's ``settings``)."""
    if not os.path.isdir(src):
        raise UsageError(f"--from-features {src}: no such folder")
    first, files, bad = _survey(src)
    window = _video_settings(first, files[0][0])
    have = window.to_dict()
    for k, v in (settings or {}).items():
        if v is not None and k in have and not math.isclose(float(v), float(have[k])):
            raise FeaturesMismatchError(f"the features in {src} were extracted with {k}={have[k]}, not {v}; "
                                        "leave the window options out to use the features' settings")
    weights = str(first.get("weights") or "")
    if not weights:
        raise FeaturesMismatchError(f"{show_path(files[0][0])}: no weights fingerprint in the metadata")
    return files, bad, window, weights


def _plan(idx: Index, files: list[tuple[str, dict[str, Any]]], report: IndexReport, subs: TranscriptIngest
          ) -> tuple[list[tuple[str, str, int, float, str]], set[str]]:
    """The feature files to add (feature file, video, size, mtime, ``new``/``changed``) and every
    video they cover; videos outside the roots or changed since extraction go to ``report.failed``,
    unchanged ones are counted."""
    todo: list[tuple[str, str, int, float, str]] = []
    done_videos: set[str] = set()
    for file, meta in files:
        source = meta.get("source") or {}
        video = os.path.abspath(str(source.get("path") or ""))
        size, mtime_ns = int(source.get("size", -1)), int(source.get("mtime_ns", -1))
        done_videos.add(video)
        if not inside_roots(video, idx.roots):
            why = (f"the source path in {show_path(file)} is outside the index's roots "
                   f"({', '.join(show_path(r) for r in idx.roots)}); not indexed")
            idx.log_error(video, why)
            report.failed.append((video, why))
            continue
        try:
            st: os.stat_result | None = os.stat(video)
        except OSError:
            st = None  # not on this box: recorded as extracted
        if st is not None and (int(st.st_size) != size or int(st.st_mtime_ns) != mtime_ns):
            why = f"the video changed since it was extracted ({show_path(file)}): re-run milnce extract"
            idx.log_error(video, why)
            report.failed.append((video, why))
            continue
        mtime = float(st.st_mtime) if st is not None else _mtime(mtime_ns)
        known = idx.video_id_of(video)
        if known is not None and int(idx.row(known).size) == size and float(idx.row(known).mtime) == mtime:
            report.unchanged += 1
            subs.refresh(video, known, idx.row(known).hash, near=file)
            continue
        todo.append((file, video, size, mtime, "changed" if known is not None else "new"))
    return todo, done_videos


def _record_failures(idx: Index, src: str, done_videos: set[str], report: IndexReport) -> None:
    """The extraction's failures (``failures*.csv``) as the index's errors, unless the video was
    extracted since or failed before unchanged."""
    from ..extract import read_failures

    for path, reason in read_failures(src):
        video = os.path.abspath(path)
        if video in done_videos:
            continue  # extracted since
        size_: int | None
        mtime_: float | None
        try:
            st = os.stat(video)
            size_, mtime_ = int(st.st_size), float(st.st_mtime)
        except OSError:
            size_, mtime_ = None, None
        entry = idx.error_entry(video)
        if entry is not None and entry == (size_, mtime_):
            report.previously_failed += 1
            report.skipped_failures.append((video, reason_text(reason, path) or reason))
            continue
        reason = reason_text(reason, path) or reason
        idx.record_error(video, reason, size_, mtime_)
        report.failed.append((video, reason))


def _no_roots(src: str) -> None:
    raise UsageError(f"--root: say where the videos of {src} live (the folder they were extracted from, as seen "
                     "from here; the files need not exist yet): the server serves only files inside the index's roots")


@dataclass
class _Loaded:
    video: str
    size: int
    mtime: float
    why: str
    content_hash: str
    windows: VideoWindows
    transcript: Any = None


def _add_features(idx: Index, todo: list[tuple[str, str, int, float, str]], report: IndexReport, progress: bool,
                  read: Callable[[str], Any], subs: TranscriptIngest) -> None:
    """Read the feature files and append their windows, a few hundred videos per transaction
    (rows fsynced before the transaction that records them, as for every index write)."""
    bar = Progress(len(todo), 0.0, enabled=progress)
    t0 = time.perf_counter()
    batch: list[_Loaded] = []

    def commit() -> None:
        idx.add_videos([(b.video, b.windows, b.size, b.mtime, b.content_hash) for b in batch],
                       transcripts={b.video: b.transcript for b in batch if b.transcript is not None})
        for b in batch:
            w = b.windows
            dur = float(w.duration) if math.isfinite(w.duration) else float(np.asarray(w.ends)[-1])
            report.video_seconds += dur
            report.windows_added += len(w)
            (report.updated if b.why == "changed" else report.added).append(b.video)
            bar.done(dur, b.video)
        batch.clear()

    unreadable: list[str] = []
    try:
        nwin = 0
        for file, video, size, mtime, why in todo:
            try:
                ff = read(file)
            except MilnceError as exc:  # a damaged or crafted file (duration -5, 1e308 ...): that file fails
                unreadable.append(str(exc))
                if len(unreadable) == len(todo):  # nothing to index: one error, as for a folder of such files
                    more = f" (and {len(todo) - 1} more)" if len(todo) > 1 else ""
                    raise UsageError(f"no readable milnce feature file; {unreadable[0]}{more}") from None
                reason = f"unreadable feature file: {exc}"
                log.warning("%s", reason)
                idx.log_error(video, reason)
                report.failed.append((video, reason))
                continue
            if len(ff) == 0 or ff.embeddings.ndim != 2 or len(ff.embeddings) != len(ff):
                raise FeaturesMismatchError(f"{show_path(file)}: no windows or inconsistent arrays")
            if ff.embeddings.shape[1] != idx.dim:
                raise FeaturesMismatchError(f"{show_path(file)}: {ff.embeddings.shape[1]}-dimensional embeddings, "
                                            f"the index holds {idx.dim}-dimensional ones; not a file of this model")
            bad = check_finite(show_path(file), ff.starts, ff.ends, ff.embeddings)
            if bad is not None:
                raise FeaturesMismatchError(f"{bad}; the index is not given this file (re-extract the video)")
            h = ""  # the video is not on this box: a later milnce index cannot recognise it moved
            if os.path.isfile(video):
                try:
                    h = file_hash(video)
                except OSError:
                    pass
            ff.features = None  # only the embeddings are stored
            batch.append(_Loaded(video, size, mtime, why, h, ff, subs.read(video, h, near=file)))
            nwin += len(ff)
            if len(batch) >= _COMMIT_VIDEOS or nwin >= _COMMIT_WINDOWS:
                commit()
                nwin = 0
        if batch:
            commit()
    finally:
        bar.close()
        report.embed_seconds += time.perf_counter() - t0
