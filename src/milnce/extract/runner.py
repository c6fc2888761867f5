"""``extract``: a resumable, sharded feature extraction into a mirrored tree of ``.npz`` files,
and ``check``: how complete an output folder is against the input list."""

from __future__ import annotations

import csv
import io
import math
import os
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..atomic import atomic_write_text
from ..errors import UsageError
from ..windows import WindowSettings
from .inputs import Shard, VideoInput, collect_inputs, output_path, shard_inputs
from .pipeline import PADS, VideoJob, run_jobs
from .store import FORMAT, StoreError, read_meta, temp_files, write_feature_file

__all__ = ["FEATURES", "ExtractReport", "CheckReport", "extract", "check", "failures_file", "read_failures"]

FEATURES = ("video_embedding", "mixed_5c")


@dataclass
class ExtractReport:
    """What one ``extract`` call did (this shard)."""

    out_dir: str
    shard: str
    inputs: int  # videos in the whole list
    share: int  # videos in this shard
    extracted: int = 0
    skipped: int = 0  # already done with the same settings and weights
    redone: int = 0  # outputs replaced: the video, the settings or the weights changed
    failed: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    windows: int = 0
    video_seconds: float = 0.0
    wall_s: float = 0.0
    failures_file: str | None = None

    @property
    def video_hours(self) -> float:
        return self.video_seconds / 3600.0

    @property
    def rate(self) -> float:
        """Video-seconds extracted per wall-clock second."""
        return self.video_seconds / self.wall_s if self.wall_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["failures"] = [{"path": p, "reason": r} for p, r in self.failures]
        d.update(video_hours=self.video_hours, rate=self.rate)
        return d

    def summary(self) -> str:
        s = (f"shard {self.shard}: {self.extracted} extracted ({self.redone} redone), {self.skipped} already done, "
             f"{self.failed} failed of {self.share} videos ({self.inputs} in the list); {self.windows} windows, "
             f"{self.video_hours:.3f} video-hours in {self.wall_s:.1f} s = {self.rate:.1f} video-s per wall-s")
        return s


@dataclass
class CheckReport:
    """Completeness of an output folder against the input list (all shards)."""

    out_dir: str
    inputs: int
    done: int = 0
    missing: list[str] = field(default_factory=list)
    stale: list[tuple[str, str]] = field(default_factory=list)  # (video, why): the video changed since
    failed: list[tuple[str, str]] = field(default_factory=list)  # (video, reason) from the failure lists
    settings: dict[str, int] = field(default_factory=dict)  # settings JSON -> number of outputs
    temp_files: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.done == self.inputs

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["stale"] = [{"path": p, "why": w} for p, w in self.stale]
        d["failed"] = [{"path": p, "reason": r} for p, r in self.failed]
        d["complete"] = self.complete
        return d

    def summary(self) -> str:
        lines = [f"{self.out_dir}: {self.done} of {self.inputs} videos done"
                 f" ({100.0 * self.done / max(self.inputs, 1):.1f}%); {len(self.missing)} missing"
                 f" ({len(self.failed)} of them failed), {len(self.stale)} stale"]
        if len(self.settings) > 1:
            lines.append(f"  warning: outputs with {len(self.settings)} different settings/weights:")
            lines += [f"    {n} x {s}" for s, n in sorted(self.settings.items(), key=lambda kv: -kv[1])]
        for _p, r in self.failed[:20]:
            lines.append(f"  failed: {r}")
        for p, w in self.stale[:20]:
            lines.append(f"  stale: {p} ({w})")
        shown = {p for p, _ in self.failed}
        rest = [p for p in self.missing if p not in shown]
        for p in rest[:20]:
            lines.append(f"  missing: {p}")
        if len(rest) > 20:
            lines.append(f"  ... and {len(rest) - 20} more missing")
        if self.temp_files:
            lines.append(f"  {len(self.temp_files)} temporary file(s) of interrupted writers (removed by the next run)")
        return "\n".join(lines)


def failures_file(out_dir: str, shard: Shard) -> str:
    """``DIR/failures.csv``, or ``DIR/failures-rank{I}.csv`` when there are several shards."""
    name = "failures.csv" if shard.count == 1 else f"failures-rank{shard.index}.csv"
    return os.path.join(out_dir, name)


def read_failures(out_dir: str) -> list[tuple[str, str]]:
    """``(path, reason)`` rows of every failure list in ``out_dir`` (all ranks)."""
    rows: list[tuple[str, str]] = []
    try:
        names = sorted(n for n in os.listdir(out_dir) if n.startswith("failures") and n.endswith(".csv"))
    except OSError:
        return rows
    for n in names:
        try:
            with open(os.path.join(out_dir, n), newline="", encoding="utf-8") as f:
                rows += [(r.get("path", ""), r.get("reason", "")) for r in csv.DictReader(f)]
        except (OSError, UnicodeDecodeError, csv.Error):
            continue
    return rows


def _write_failures(path: str, rows: Sequence[tuple[str, str]]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["path", "reason"])
    w.writerows(rows)
    try:
        atomic_write_text(path, buf.getvalue())
    except OSError as exc:
        raise StoreError(f"cannot write {path}: {exc.strerror or exc}") from exc


def _source(path: str) -> dict[str, Any]:
    try:
        st = os.stat(path)
        return {"path": os.path.abspath(path), "size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}
    except OSError:
        return {"path": os.path.abspath(path), "size": -1, "mtime_ns": -1}


def _identity(settings: WindowSettings, pad: str, start: float | None, end: float | None,
              features: Sequence[str], weights: str, precision: str) -> dict[str, Any]:
    """What makes two outputs comparable: same windows, features, weights and precision."""
    return {"settings": {**settings.to_dict(), "pad": pad, "start": start, "end": end},
            "features": list(features), "weights": weights, "precision": precision}


def _why_redo(meta: dict[str, Any] | None, ident: dict[str, Any], source: dict[str, Any]) -> str | None:
    """None if the existing output is current, else why it must be redone."""
    if meta is None:
        return "unreadable or not a feature file"
    for key in ("settings", "features", "weights", "precision"):
        if meta.get(key) != ident[key]:
            return f"different {key}"
    old = meta.get("source", {})
    if old.get("size") != source["size"] or old.get("mtime_ns") != source["mtime_ns"]:
        return "the video changed"
    return None


def _as_inputs(paths: Iterable[str | os.PathLike[str]] | Sequence[VideoInput]) -> list[VideoInput]:
    """``collect_inputs`` rows: given as such, or collected from files, folders and list files."""
    items = list(paths)
    rows = [x for x in items if isinstance(x, VideoInput)]
    if items and len(rows) == len(items):
        return rows
    if rows:
        raise UsageError("pass either paths or collect_inputs rows, not both")
    return collect_inputs([x for x in items if not isinstance(x, VideoInput)])


def check_features(features: Iterable[str]) -> list[str]:
    """The feature names to save, validated (``video_embedding`` always included)."""
    feats = [f.strip() for f in features if f.strip()]
    bad = [f for f in feats if f not in FEATURES]
    if bad or not feats:
        raise UsageError(f"features must be among {', '.join(FEATURES)}, got {', '.join(feats) or 'none'}")
    if "video_embedding" not in feats:  # always kept: it is what search and evaluation use
        feats.insert(0, "video_embedding")
    return [f for f in FEATURES if f in feats]


def extract(paths: Iterable[str | os.PathLike[str]] | Sequence[VideoInput], out_dir: str | os.PathLike[str],
            model: Any, settings: WindowSettings, *, features: Iterable[str] = FEATURES, pad: str = "repeat",
            start: float | None = None, end: float | None = None, batch_size: int | None = None,
            workers: int | None = None, decode_threads: int | None = None, shard: Shard | None = None,
            overwrite: bool = False, progress: bool = False) -> ExtractReport:
    """Extract features for the videos of ``paths`` (files, folders, list files; or
    ``collect_inputs`` rows) into ``out_dir`` (``DIR/<relative path>.npz``), this ``shard``'s share.

    Skips videos whose output is current (same settings, features, weights, precision and the
    same video file size and mtime), redoes the others (``overwrite``: all). Unreadable videos
    are listed in ``failures_file(out_dir, shard)`` and never stop the run. ``StoreError`` if an
    output cannot be written (e.g. disk full; nothing partial is left)."""
    if pad not in PADS:
        raise UsageError(f"pad must be one of {', '.join(PADS)}, got {pad!r}")
    feats = check_features(features)
    shard = shard or Shard()
    out = os.fspath(out_dir)
    if os.path.exists(out) and not os.path.isdir(out):
        raise UsageError(f"--out {out} exists and is not a folder")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create the output folder {out}: {exc.strerror or exc}") from exc
    inputs = _as_inputs(paths)
    share = shard_inputs(inputs, shard.index, shard.count)
    ident = _identity(settings, pad, start, end, feats, str(model.weights_id), str(model.precision))
    report = ExtractReport(out_dir=out, shard=shard.label, inputs=len(inputs), share=len(share))
    report.failures_file = failures_file(out, shard)
    t0 = time.perf_counter()
    todo: list[tuple[VideoInput, str, dict[str, Any], bool]] = []
    for item in share:
        target = output_path(out, item)
        source = _source(item.path)
        exists = os.path.exists(target)
        if exists and not overwrite and _why_redo(read_meta(target), ident, source) is None:
            report.skipped += 1
            continue
        todo.append((item, target, source, exists))
    failures: list[tuple[str, str]] = []
    _write_failures(report.failures_file, failures)
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), unit="video", desc=f"rank {shard.label}" if shard.count > 1 else "videos",
                   dynamic_ncols=True, file=sys.stderr)
    jobs = (VideoJob(item.path, key=i, start=start, end=end) for i, (item, *_rest) in enumerate(todo))
    results = run_jobs(model, jobs, settings, pad=pad, features="mixed_5c" in feats, batch_size=batch_size,
                       workers=workers, decode_threads=decode_threads)
    try:
        for res in results:
            assert isinstance(res.key, int)  # the job numbers given above
            item, target, source, existed = todo[res.key]
            if res.error is not None:
                failures.append((item.path, res.error))
                report.failed += 1
                _write_failures(report.failures_file, failures)
                if bar is not None:
                    bar.write(f"milnce: failed: {res.error}", file=sys.stderr)
            else:
                duration = res.duration if math.isfinite(res.duration) else float(res.ends.max(initial=0.0))
                arrays = {"video_embedding": res.video_embedding, "start": res.starts, "end": res.ends,
                          "duration": np.asarray(duration, np.float64), "path": np.asarray(item.path, np.str_)}
                if res.mixed_5c is not None:
                    arrays["mixed_5c"] = res.mixed_5c
                meta = {"format": FORMAT, **ident, "source": source, "duration": duration,
                        "windows": len(res), "warnings": res.warnings}
                write_feature_file(target, arrays, meta)
                report.extracted += 1
                report.redone += int(existed)
                report.windows += len(res)
                report.video_seconds += duration
            if bar is not None:
                bar.update(1)
                el = time.perf_counter() - t0
                bar.set_postfix_str(f"{report.video_hours:.2f} video-h, {report.video_seconds / max(el, 1e-9):.1f} video-s/s",
                                    refresh=False)
    finally:
        results.close()  # stops the decoding workers now, also on errors and Ctrl-C
        if bar is not None:
            bar.close()
        report.wall_s = time.perf_counter() - t0
        report.failures = failures
    return report


def check(out_dir: str | os.PathLike[str], paths: Iterable[str | os.PathLike[str]] | Sequence[VideoInput]) -> CheckReport:
    """How complete ``out_dir`` is for the videos of ``paths`` (all shards): done, missing
    (failed ones named with their reason), stale (the video changed since), the settings seen."""
    out = os.fspath(out_dir)
    if not os.path.isdir(out):
        raise UsageError(f"{out}: no such output folder")
    inputs = _as_inputs(paths)
    rep = CheckReport(out_dir=out, inputs=len(inputs))
    failed = dict(read_failures(out))
    import json

    for item in inputs:
        target = output_path(out, item)
        if not os.path.exists(target):
            rep.missing.append(item.path)
            if item.path in failed:
                rep.failed.append((item.path, failed[item.path]))
            continue
        meta = read_meta(target)
        if meta is None:
            rep.stale.append((item.path, "unreadable or not a feature file"))
            continue
        key = json.dumps({k: meta.get(k) for k in ("settings", "features", "weights", "precision")}, sort_keys=True)
        rep.settings[key] = rep.settings.get(key, 0) + 1
        src, old = _source(item.path), meta.get("source", {})
        if old.get("size") != src["size"] or old.get("mtime_ns") != src["mtime_ns"]:
            rep.stale.append((item.path, "the video changed since it was extracted"))
            continue
        rep.done += 1
    rep.temp_files = temp_files(out)
    return rep
