"""``extract``: a resumable, sharded feature extraction into a mirrored tree of ``.npz`` files,
and ``check``: how complete an output folder is against the input list."""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import math
import os
import re
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ..atomic import atomic_write_bytes
from ..errors import UsageError
from ..plural import plural
from ..printable import show_path
from ..protocols import VideoEncoder
from ..runoptions import RunOptions, resolve_run_options
from ..video import VideoJob, VideoWindows, failure_reason, run_jobs
from ..windows import WindowSettings, check_pad
from .inputs import Shard, VideoInput, collect_inputs, shard_inputs
from .store import FORMAT, Layout, NpzLayout, StoreError, temp_files

__all__ = ["FEATURES", "ExtractReport", "CheckReport", "extract", "check", "failures_file", "read_failures"]

FEATURES = ("video_embedding", "mixed_5c")

log = logging.getLogger("milnce.extract")


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
    shards: int | None = None  # shares of the run (None: one)

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
             f"{self.failed} failed of {plural(self.share, 'video')} ({self.inputs} in the list); "
             f"{plural(self.windows, 'window')}, "
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
        lines = [f"{show(self.out_dir)}: {self.done} of {plural(self.inputs, 'video')} done"
                 f" ({100.0 * self.done / max(self.inputs, 1):.1f}%); {len(self.missing)} missing"
                 f" ({len(self.failed)} of them failed), {len(self.stale)} stale"]
        if len(self.settings) > 1:
            lines.append(f"  warning: outputs with {len(self.settings)} different settings/weights:")
            lines += [f"    {n} x {s}" for s, n in sorted(self.settings.items(), key=lambda kv: -kv[1])]
        for p, r in self.failed[:20]:  # older failure lists had the path in the reason too
            lines.append(f"  failed: {show(r if r.startswith(p) else f'{p}: {r}')}")
        for p, w in self.stale[:20]:
            lines.append(f"  stale: {show(p)} ({show(w)})")
        shown = {p for p, _ in self.failed}
        rest = [p for p in self.missing if p not in shown]
        for p in rest[:20]:
            lines.append(f"  missing: {show(p)}")
        if len(rest) > 20:
            lines.append(f"  ... and {len(rest) - 20} more missing")
        if self.temp_files:
            lines.append(f"  {len(self.temp_files)} temporary file(s) of interrupted writers (removed by the next run)")
        return "\n".join(lines)


def failures_file(out_dir: str, shard: Shard, merged: bool = False) -> str:
    """``DIR/failures.csv``, or ``DIR/failures-rank{I}.csv`` when there are several shards
    (``merged``: the list a torchrun rank 0 writes for its share, ``failures-task{I}.csv``)."""
    if shard.count == 1:
        return os.path.join(out_dir, "failures.csv")
    return os.path.join(out_dir, f"failures-{'task' if merged else 'rank'}{shard.index}.csv")


_FAIL_NAME = re.compile(r"failures(?:-(rank|task)\d+)?\.csv")


def _shards_of(header: Sequence[str]) -> int | None:
    for h in header[2:]:
        if h.startswith("shards="):
            with contextlib.suppress(ValueError):
                return int(h[len("shards="):])
    return None


def read_failures(out_dir: str) -> list[tuple[str, str]]:
    """``(path, reason)`` rows of every failure list in ``out_dir`` (all ranks and array tasks),
    each path once. Per-share lists record their number of shares: those of an earlier run with
    another number than the newest list's are ignored (and a warning says so)."""
    found: list[tuple[str, str, float, int | None, list[tuple[str, str]]]] = []  # kind, name, mtime, N, rows
    try:
        names = sorted(n for n in os.listdir(out_dir) if _FAIL_NAME.fullmatch(n))
    except OSError:
        return []
    for n in names:
        f = os.path.join(out_dir, n)
        try:
            with open(f, newline="", encoding="utf-8", errors="surrogateescape") as fh:
                reader = csv.reader(fh)
                header = next(reader, [])
                rows = [(r[0], r[1] if len(r) > 1 else "") for r in reader if r]
            found.append((n.split("-")[1][:4] if "-" in n else "", n, os.path.getmtime(f), _shards_of(header), rows))
        except (OSError, csv.Error):
            continue
    out: dict[str, str] = {}
    for kind, name, _mtime, shards, rows in found:
        if kind:
            newest = max((x for x in found if x[0] == kind), key=lambda x: x[2])
            if shards is not None and newest[3] is not None and shards != newest[3]:
                log.warning("ignored %s: from an earlier run with %d shares (the latest run has %d)",
                            name, shards, newest[3])
                continue
        for p, r in rows:
            out.setdefault(p, r)
    return list(out.items())


def write_failures(path: str, rows: Sequence[tuple[str, str]], shards: int | None = None) -> None:
    """The failure list, atomically; names that are not UTF-8 are kept byte for byte. ``shards``:
    the number of shares of the run (a third header column ``shards=N``)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["path", "reason"] + ([f"shards={shards}"] if shards else []))
    w.writerows(rows)
    try:
        atomic_write_bytes(path, buf.getvalue().encode("utf-8", "surrogateescape"))
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


def as_inputs(paths: Iterable[str | os.PathLike[str]] | Sequence[VideoInput]) -> list[VideoInput]:
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
            model: VideoEncoder, settings: WindowSettings, *, features: Iterable[str] = FEATURES, pad: str = "repeat",
            start: float | None = None, end: float | None = None, batch_size: int | None = None,
            workers: int | None = None, decode_threads: int | None = None, shard: Shard | None = None,
            overwrite: bool = False, progress: bool = False, verify: bool = False,
            layout: Layout | None = None, run: RunOptions | None = None) -> ExtractReport:
    """Extract features for the videos of ``paths`` (files, folders, list files; or
    ``collect_inputs`` rows) into ``out_dir`` (``DIR/<relative path>.npz``), this ``shard``'s share.

    Skips videos whose output is current (same settings, features, weights, precision and the
    same video file size and mtime, and the file whole by a cheap structural check), redoes the
    others (``overwrite``: all; ``verify``: also those whose members fail their CRC check).
    Unreadable videos are listed in ``failures_file(out_dir, shard)`` and never stop the run.
    ``StoreError`` if an output cannot be written (e.g. disk full; nothing partial is left).
    ``layout``: the output layout (default ``store.NpzLayout``, the ``.npz`` tree; a recipe's is
    ``recipe_store.RecipeLayout``). ``run``: the resolved ``milnce.runoptions.RunOptions``
    (``milnce extract``'s) instead of ``batch_size``/``workers``/``decode_threads``."""
    check_pad(pad)
    feats = check_features(features)
    if run is None:  # the loose values, resolved by the one function
        run = resolve_run_options({"batch_size": batch_size, "workers": workers, "decode_threads": decode_threads},
                                    device=model.device)
    elif (batch_size, workers, decode_threads) != (None, None, None):
        raise UsageError("give either run= (RunOptions) or batch_size/workers/decode_threads, not both")
    shard = shard or Shard()
    out = _out_folder(out_dir)
    inputs = as_inputs(paths)
    layout = layout or NpzLayout()
    layout.prepare(out)
    share = shard_inputs(inputs, shard.index, shard.count)
    ident = _identity(settings, pad, start, end, feats, str(model.weights_id), str(getattr(model, "precision", "fp32")))
    report = ExtractReport(out_dir=out, shard=shard.label, inputs=len(inputs), share=len(share))
    report.failures_file = failures_file(out, shard)
    report.shards = shard.count if shard.count > 1 else None
    t0 = time.perf_counter()
    todo = _plan(share, out, ident, report, layout, overwrite=overwrite, verify=verify)
    write_failures(report.failures_file, [], report.shards)
    bar = _bar(len(todo), shard) if progress and todo else None
    jobs = (VideoJob(item.path, key=i, start=start, end=end) for i, (item, *_rest) in enumerate(todo))
    results = run_jobs(model, jobs, settings, pad=pad, features="mixed_5c" in feats, options=run)
    try:
        for res in results:
            assert isinstance(res.key, int)  # the job numbers given above
            _store(res, todo[res.key], ident, report, bar, layout)
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
    return report


_Todo = tuple[VideoInput, str, dict[str, Any], bool]  # (video, its output, its size and mtime, output existed)


def _out_folder(out_dir: str | os.PathLike[str]) -> str:
    out = os.fspath(out_dir)
    if os.path.exists(out) and not os.path.isdir(out):
        raise UsageError(f"--out {out} exists and is not a folder")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create the output folder {out}: {exc.strerror or exc}") from exc
    return out


def _plan(share: Sequence[VideoInput], out: str, ident: dict[str, Any], report: ExtractReport, layout: Layout, *,
          overwrite: bool, verify: bool) -> list[_Todo]:
    """The videos of ``share`` to (re)do; counts the others as skipped."""
    todo: list[_Todo] = []
    for item in share:
        target = layout.target(out, item)
        source = _source(item.path)
        exists = os.path.exists(target)
        if exists and not overwrite and _why_redo(layout.read_meta(target), ident, source) is None:
            damage = layout.verify(target) if verify else None
            if damage is None:
                report.skipped += 1
                continue
            log.warning("%s: %s; extracting it again", show(target), damage)
        todo.append((item, target, source, exists))
    return todo


def _bar(total: int, shard: Shard) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="video", desc=f"rank {shard.label}" if shard.count > 1 else "videos",
                dynamic_ncols=True, file=sys.stderr)


def _store(res: VideoWindows, todo: _Todo, ident: dict[str, Any], report: ExtractReport, bar: Any,
           layout: Layout) -> None:
    """Write one video's feature file, or list it as failed."""
    item, target, source, existed = todo
    for note in res.warnings:  # truncated or corrupt data that was skipped: said, not only kept in the file
        _say(bar, note)
    if res.error is not None:
        report.failures.append((item.path, failure_reason(res.error, item.path)))  # as index and eval list it
        report.failed += 1
        write_failures(report.failures_file or "", report.failures, report.shards)
        return  # listed once, by the caller at the end (as index and eval do)
    duration = res.duration if math.isfinite(res.duration) else float(res.ends.max(initial=0.0))
    res.duration, res.path = duration, item.path
    meta = {"format": FORMAT, **ident, "source": source, "duration": duration,
            "windows": len(res), "warnings": res.warnings}
    layout.write(target, res.to_arrays(), meta)
    report.extracted += 1
    report.redone += int(existed)
    report.windows += len(res)
    report.video_seconds += duration


def _say(bar: Any, msg: str) -> None:
    if bar is not None:
        bar.write(f"milnce: {show(msg)}", file=sys.stderr)
    else:
        log.warning("%s", show(msg))


def show(text: str) -> str:
    """``text`` printable whatever a file name holds (not UTF-8, ESC, a newline: ``\\xNN``)."""
    return show_path(text)


def check(out_dir: str | os.PathLike[str], paths: Iterable[str | os.PathLike[str]] | Sequence[VideoInput], *,
          verify: bool = False, layout: Layout | None = None) -> CheckReport:
    """How complete ``out_dir`` is for the videos of ``paths`` (all shards): done, missing
    (failed ones named with their reason), stale (the video changed since, or the file is damaged:
    a cheap structural check always, every member's CRC with ``verify``), the settings seen."""
    out = os.fspath(out_dir)
    if not os.path.isdir(out):
        raise UsageError(f"{out}: no such output folder")
    inputs = as_inputs(paths)
    rep = CheckReport(out_dir=out, inputs=len(inputs))
    layout = layout or NpzLayout()
    failed = dict(read_failures(out))
    import json

    for item in inputs:
        target = layout.target(out, item)
        if not os.path.exists(target):
            rep.missing.append(item.path)
            if item.path in failed:
                rep.failed.append((item.path, failed[item.path]))
            continue
        meta = layout.read_meta(target)
        if meta is None:
            rep.stale.append((item.path, "unreadable, damaged or not a feature file"))
            continue
        damage = layout.verify(target) if verify else None
        if damage is not None:
            rep.stale.append((item.path, f"damaged: {damage}"))
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
