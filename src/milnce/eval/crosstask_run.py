"""``evaluate_crosstask()``: CrossTask zero-shot step localisation end to end, and its reports.

Videos -> one window per position through the extraction pipeline (``embed_clips``: one job per
video, cached per video) -> scores against the task's step texts -> the DP assignment
(``milnce.eval.dp``) under two costs, and per-step argmax -> recall per task and its mean.
The protocol is documented in ``milnce.eval.crosstask``.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_file, atomic_write_bytes
from ..errors import MilnceError, UsageError
from ..printable import show_path
from ..runoptions import RunOptions
from .cache import EmbeddingCache, as_cache
from .crosstask import (
    AnnotationIssues,
    CrossTaskRelease,
    CrossTaskVideo,
    ground_truth,
    load_release,
    n_positions,
    position_starts,
    read_annotation,
    step_recall,
)
from .datasets import EvalItem, VideoResolver
from .dp import assign_steps
from .protocol import EvalSettings
from .report import clean_json, published
from .run import Runner, embed_clips, encode_captions, header_duration

__all__ = ["CrossTaskResult", "DECODERS", "evaluate_crosstask", "format_crosstask", "crosstask_dict",
           "write_crosstask"]

TITLE = "CrossTask (primary tasks, videos_val.csv), zero-shot step localisation: average recall"
# name -> what it is; "dp_log_softmax" is the headline
DECODERS = {
    "dp_log_softmax": "DP assignment, cost -log_softmax over the steps at each position (headline)",
    "dp_neg_scores": "DP assignment, cost -score",
    "argmax": "per-step argmax of the score over positions (no ordering; some later papers)",
}
_CHUNK_POSITIONS = 16384  # positions embedded per pipeline call (bounds the memory of one call)


@dataclass
class VideoScores:
    """One evaluated video: window start per position, scores (positions x steps), decodings."""

    video: CrossTaskVideo
    starts: np.ndarray
    scores: np.ndarray
    embeddings: np.ndarray
    truth: np.ndarray
    decoded: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class CrossTaskResult:
    """What ``evaluate_crosstask`` measured."""

    release: CrossTaskRelease
    settings: EvalSettings
    metrics: dict[str, Any]
    videos: list[VideoScores]
    text: dict[str, np.ndarray]
    weights_id: str
    seconds: float
    missing: dict[str, str] = field(default_factory=dict)
    unreadable: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    issues: AnnotationIssues = field(default_factory=AnnotationIssues)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def counts(self) -> dict[str, int]:
        return {"videos_selected": len(self.release.videos), "evaluated": len(self.videos),
                "missing": len(self.missing), "unreadable": len(self.unreadable), "skipped": len(self.skipped),
                "positions": int(sum(len(v.starts) for v in self.videos))}


def log_softmax_cost(scores: np.ndarray) -> np.ndarray:
    """``-log_softmax`` over the steps (axis 1) of a positions x steps score matrix."""
    s = np.asarray(scores, np.float64)
    m = s.max(axis=1, keepdims=True)
    return -(s - m - np.log(np.exp(s - m).sum(axis=1, keepdims=True)))


def decode(scores: np.ndarray) -> dict[str, np.ndarray]:
    """Position of each step under every decoder of ``DECODERS`` (``scores``: T x K, T >= K)."""
    out = {}
    for name, cost in (("dp_log_softmax", log_softmax_cost(scores)), ("dp_neg_scores", -np.asarray(scores, np.float64))):
        a = assign_steps(cost)
        if a is None:
            raise UsageError(f"fewer positions ({len(scores)}) than steps ({scores.shape[1]})")
        out[name] = a.positions
    out["argmax"] = np.argmax(np.asarray(scores), axis=0).astype(np.int64)
    return out


def _prepare(release: CrossTaskRelease, videos: str | os.PathLike[str], res: CrossTaskResult
             ) -> list[tuple[CrossTaskVideo, Path, float, list[tuple[int, float, float, int]]]]:
    """Find, read the annotation of, and time every video; the rest are counted in ``res``."""
    resolver = VideoResolver(videos, "crosstask")
    items = [EvalItem(i, v.video_id, folder=v.task_id) for i, v in enumerate(release.videos)]
    paths = resolver.resolve_all(items)
    todo = []
    for i, v in enumerate(release.videos):
        ann = release.annotation_path(v)
        k = len(release.tasks[v.task_id].steps)
        if not ann.is_file():  # the reference only scores videos that have an annotation file
            res.skipped[v.video_id] = f"no annotation file {ann.name}"
            continue
        rows = read_annotation(ann, k)  # bad rows are errors, before any video is decoded
        path = paths[i]
        if path is None:
            res.missing[v.video_id] = v.task_id
            continue
        try:
            duration = header_duration(path)
        except (MilnceError, OSError, ValueError) as exc:
            res.unreadable[v.video_id] = str(exc)
            continue
        if n_positions(duration) < k:
            res.skipped[v.video_id] = (f"{n_positions(duration)} position(s) ({duration:.2f} s) for {k} steps: "
                                       "no valid assignment")
            continue
        todo.append((v, path, duration, rows))
    return todo


def evaluate_crosstask(
    model: Any,
    videos: str | os.PathLike[str],
    release: str | os.PathLike[str] | CrossTaskRelease,
    *,
    settings: EvalSettings | None = None,
    limit: int | None = None,
    cache: EmbeddingCache | str | os.PathLike[str] | bool | None = True,
    workers: int | None = None,
    batch_size: int | None = None,
    progress: bool = False,
    runner: Runner | None = None,
    run: RunOptions | None = None,
) -> CrossTaskResult:
    """Evaluate ``model`` on CrossTask: the release folder ``release`` (or a loaded one), the videos
    under ``videos`` (found by id, any container). Metrics are over the videos found, read and
    annotated; the rest are counted and listed. ``run``: resolved ``milnce.runoptions.RunOptions``
    instead of ``workers``/``batch_size``."""
    t0 = time.perf_counter()
    rel = release if isinstance(release, CrossTaskRelease) else load_release(release, limit=limit)
    settings = settings or EvalSettings.for_benchmark("crosstask", num_windows=1)
    if settings.num_windows != 1:
        raise UsageError("CrossTask scores one window per position: num_windows must be 1")
    cache = as_cache(cache)
    res = CrossTaskResult(rel, settings, {}, [], {}, str(getattr(model, "weights_id", "unknown")), 0.0)
    todo = _prepare(rel, videos, res)
    for tid, task in rel.tasks.items():
        res.text[tid] = encode_captions(model, list(task.steps), settings.max_words)[0]
    window = settings.num_frames / settings.fps
    stats = {"windows": 0, "cached_videos": 0, "dp_s": 0.0}
    chunk: list[tuple[CrossTaskVideo, Path, float, list]] = []
    size = 0
    for n, entry in enumerate(todo):
        chunk.append(entry)
        size += n_positions(entry[2])
        if size >= _CHUNK_POSITIONS or n == len(todo) - 1:
            _embed_chunk(model, chunk, window, res, stats, settings, cache, runner, workers, batch_size, progress, run)
            chunk, size = [], 0
    res.metrics = _metrics(res)
    res.seconds = time.perf_counter() - t0
    res.info = {"cache": str(cache.folder) if cache is not None else None, "windows_embedded": stats["windows"],
                "cached_videos": stats["cached_videos"], "dp_seconds": stats["dp_s"]}
    return res


def _embed_chunk(model: Any, chunk: list, window: float, res: CrossTaskResult, stats: dict, settings: EvalSettings,
                 cache: EmbeddingCache | None, runner: Runner | None, workers: int | None, batch_size: int | None,
                 progress: bool, run: RunOptions | None = None) -> None:
    items: list[EvalItem] = []
    paths: dict[int, Path | None] = {}
    spans = []
    for v, path, duration, _rows in chunk:
        starts = position_starts(n_positions(duration), duration, window)
        first = len(items)
        for s in starts:
            items.append(EvalItem(len(items), v.video_id, float(s), float(s), folder=v.task_id))
            paths[len(items) - 1] = path
        spans.append((first, len(items), starts))
    clips = embed_clips(model, items, paths, settings, cache=cache, runner=runner, workers=workers,
                        batch_size=batch_size, progress=progress, run=run)
    stats["windows"] += clips.windows
    stats["cached_videos"] += clips.cached_videos
    for (v, _path, _dur, rows), (a, b, starts) in zip(chunk, spans):
        if not clips.mask[a:b].all():
            res.unreadable[v.video_id] = clips.unreadable.get(
                v.video_id, f"{int((~clips.mask[a:b]).sum())} of {b - a} positions could not be read")
            continue
        emb = clips.video[a:b]
        scores = emb.astype(np.float64) @ res.text[v.task_id].astype(np.float64).T
        k = len(res.release.tasks[v.task_id].steps)
        truth = ground_truth(rows, k, b - a, res.release.annotation_path(v).name, res.issues)
        t0 = time.perf_counter()
        decoded = decode(scores)
        stats["dp_s"] += time.perf_counter() - t0
        res.videos.append(VideoScores(v, starts, scores.astype(np.float32), emb.copy(), truth, decoded))


def _metrics(res: CrossTaskResult) -> dict[str, Any]:
    per_task: dict[str, dict[str, Any]] = {}
    means: dict[str, list[float]] = {d: [] for d in DECODERS}
    for tid, task in res.release.tasks.items():
        vids = [v for v in res.videos if v.video.task_id == tid]
        row: dict[str, Any] = {"title": task.title, "steps": len(task.steps), "videos": len(vids)}
        for d in DECODERS:
            matched, annotated = step_recall([v.truth for v in vids], [v.decoded[d] for v in vids])
            row["annotated_steps"] = annotated
            row[d] = 100.0 * matched / annotated if annotated else float("nan")
            if annotated:
                means[d].append(row[d])
        per_task[tid] = row
    out: dict[str, Any] = {d: (float(np.mean(means[d])) if means[d] else float("nan")) for d in DECODERS}
    out["recall"] = out["dp_log_softmax"]
    out["tasks_evaluated"] = len(means["dp_log_softmax"])
    out["per_task"] = per_task
    return out


# ------------------------------------------------------------------------------------------
# Reports


def crosstask_dict(res: CrossTaskResult) -> dict[str, Any]:
    """Everything ``metrics.json`` holds (JSON-ready)."""
    c = res.counts
    return clean_json({
        "benchmark": "crosstask",
        "title": TITLE,
        "annotations": str(res.release.root),
        "videos_file": str(res.release.videos_file),
        "metrics": res.metrics,
        "decoders": DECODERS,
        "published": published("crosstask"),
        "note": (f"recall over the {c['evaluated']} of {c['videos_selected']} videos found, read and annotated; "
                 "mean over tasks of matched / annotated steps (percent)"),
        "counts": c,
        "missing_videos": sorted(res.missing),
        "unreadable_videos": dict(sorted(res.unreadable.items())),
        "skipped_videos": dict(sorted(res.skipped.items())),
        "annotation_rows_tolerated": res.issues.to_dict(),
        "settings": {**res.settings.to_dict(), "positions": "ceil(duration) one-second positions",
                     "window": "centred on t + 0.5, shifted inside the video"},
        "weights_id": res.weights_id,
        "seconds": res.seconds,
        "run": res.info,
    })


def format_crosstask(res: CrossTaskResult) -> str:
    """The per-task table and the averages beside the published number."""
    m, c = res.metrics, res.counts
    pub = published("crosstask").get("avg")
    lines = [TITLE, f"weights {res.weights_id}",
             f"videos evaluated: {c['evaluated']} of {c['videos_selected']}; missing: {c['missing']}; "
             f"unreadable: {c['unreadable']}; skipped: {c['skipped']}"]
    if c["evaluated"] < c["videos_selected"]:
        lines.append("recall is over the videos present only: not directly comparable to the published number")
    if not res.videos:
        lines.append("no metrics: no video could be evaluated")
        return "\n".join(lines)
    lines += ["", f"{'task':<8} {'videos':>6} {'annotated':>9}  {'DP -lsm':>7}  {'DP -s':>7}  {'argmax':>7}  title"]
    for tid, r in m["per_task"].items():
        vals = "  ".join(f"{r[d]:7.1f}" if math.isfinite(r[d]) else f"{'-':>7}" for d in DECODERS)
        lines.append(f"{tid:<8} {r['videos']:>6} {r['annotated_steps']:>9}  {vals}  {show_path(str(r['title']))}")
    lines += ["", f"{'average recall':<28} {'this run':>9}  {'published':>9}"]
    names = {"dp_log_softmax": "DP, -log_softmax (headline)", "dp_neg_scores": "DP, -score", "argmax": "argmax per step"}
    for d in DECODERS:
        p = f"{pub:.1f}" if (d == "dp_log_softmax" and pub is not None) else ""  # as this run's column
        lines.append(f"{names[d]:<28} {m[d]:9.1f}  {p:>9}".rstrip())
    n_tol = sum(len(x) for x in res.issues.to_dict().values())
    if n_tol:
        lines.append(f"({n_tol} annotation row(s) tolerated as the reference does: see metrics.json)")
    return "\n".join(lines)


def write_crosstask(res: CrossTaskResult, out: str | os.PathLike[str]) -> dict[str, Path]:
    """Write ``metrics.json``, ``embeddings.npz``, ``scores.npz`` and ``results.txt`` into ``out``."""
    from .report import out_folder

    folder = out_folder(out)
    files = {"metrics": folder / "metrics.json", "embeddings": folder / "embeddings.npz",
             "scores": folder / "scores.npz", "table": folder / "results.txt"}
    atomic_write_bytes(files["metrics"], json.dumps(crosstask_dict(res), indent=2).encode() + b"\n")
    vids = res.release.videos
    evaluated = {v.video.video_id: v for v in res.videos}
    n_pos = [len(v.starts) for v in res.videos]
    emb = np.concatenate([v.embeddings for v in res.videos]) if res.videos else np.zeros((0, 512), np.float32)
    task_ids = list(res.text)
    arrays: dict[str, np.ndarray] = {
        "video_id": np.array([v.video_id for v in vids], dtype=str),
        "task": np.array([v.task_id for v in vids], dtype=str),
        "mask": np.array([v.video_id in evaluated for v in vids], bool),
        "position_video": np.repeat(np.arange(len(res.videos)), n_pos).astype(np.int64),
        "position_video_id": np.array([v.video.video_id for v in res.videos], dtype=str),
        "position_start": np.concatenate([v.starts for v in res.videos]) if res.videos else np.zeros(0),
        "window_embeddings": emb,
        "text_task": np.array([t for t in task_ids for _ in res.text[t]], dtype=str),
        "text_step": np.array([k + 1 for t in task_ids for k in range(len(res.text[t]))], np.int64),
        "text": np.array([s for t in task_ids for s in res.release.tasks[t].steps], dtype=str),
        "text_embeddings": (np.concatenate([res.text[t] for t in task_ids]) if task_ids
                            else np.zeros((0, 512), np.float32)),
    }
    with atomic_file(files["embeddings"]) as f:
        np.savez(f, **arrays)  # type: ignore[arg-type]
    scores: dict[str, np.ndarray] = {
        "video_id": np.array([v.video.video_id for v in res.videos], dtype=str),
        "task": np.array([v.video.task_id for v in res.videos], dtype=str),
        "window": np.asarray(res.settings.num_frames / res.settings.fps, np.float64),
    }
    for i, v in enumerate(res.videos):
        scores[f"scores_{i}"] = v.scores
        scores[f"times_{i}"] = np.arange(len(v.starts), dtype=np.float64)
        scores[f"starts_{i}"] = v.starts
    with atomic_file(files["scores"]) as f:
        np.savez(f, **scores)  # type: ignore[arg-type]
    atomic_write_bytes(files["table"], (format_crosstask(res) + "\n").encode())
    return files
