"""Reports of an evaluation: ``metrics.json``, ``embeddings.npz`` and a table next to the published numbers."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_file, atomic_write_bytes
from ..errors import NotAFolderError, OutputError
from ..plural import plural
from .run import EvalResult

__all__ = ["PUBLISHED_KEYS", "format_table", "published", "result_dict", "write_outputs", "out_folder"]

# Benchmark -> key of ``WeightsInfo.results`` of the published weights.
PUBLISHED_KEYS = {
    "youcook2": "youcook2_val_zero_shot",
    "msrvtt": "msrvtt_1k_zero_shot",
    "hmdb51": "hmdb51_linear_mixed_5c_top1",
    "ucf101": "ucf101_linear_mixed_5c_top1",
    "crosstask": "crosstask_zero_shot_recall",
}


def published(benchmark: str) -> dict[str, float]:
    """The published numbers of the released model on ``benchmark`` (``milnce.REGISTRY``)."""
    from ..weights import DEFAULT_WEIGHTS, REGISTRY

    return dict(REGISTRY[DEFAULT_WEIGHTS].results.get(PUBLISHED_KEYS[benchmark], {}))


def clean_json(x: Any) -> Any:
    """``x`` as plain JSON values: string keys, lists, floats rounded to 6 places (NaN/inf -> None)."""
    if isinstance(x, dict):
        return {str(k): clean_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [clean_json(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return None if not math.isfinite(float(x)) else round(float(x), 6)
    if isinstance(x, np.integer):
        return int(x)
    return x


def result_dict(result: EvalResult) -> dict[str, Any]:
    """Everything ``metrics.json`` holds (JSON-ready)."""
    b = result.benchmark
    counts = result.counts
    note = ("metrics are over the {evaluated} of {rows_selected} rows whose video was found and read"
            .format(**counts))
    if b.limited:
        note += f" (--limit: {counts['rows_selected']} of the {b.total_rows} annotation rows)"
    return clean_json({
        "benchmark": b.name,
        "title": b.title,
        "annotations": b.annotations,
        "metrics": result.metrics,
        "published": published(b.name),
        "note": note,
        "counts": counts,
        "missing_videos": sorted(result.clips.missing),
        "unreadable_videos": dict(sorted(result.clips.unreadable.items())),
        "empty_captions": result.empty_captions,
        "settings": result.settings.to_dict(),
        "ties": result.ties if b.task == "retrieval" else None,
        "weights_id": result.weights_id,
        "seconds": result.seconds,
        "run": result.info,
    })


def format_table(result: EvalResult) -> str:
    """A readable summary: this run's numbers beside the published ones, and the counts."""
    b, m, pub = result.benchmark, result.metrics, published(result.benchmark.name)
    c = result.counts
    lines = [b.title, f"weights {result.weights_id}"]
    lines.append(
        f"rows evaluated: {c['evaluated']:,} of {c['rows_selected']:,}"
        + (f" (--limit; the file has {b.total_rows:,})" if b.limited else "")
        + f"; missing videos: {plural(c['missing'], 'row', thousands=True)} "
        f"({plural(c['videos_missing'], 'video', thousands=True)}); "
        f"unreadable: {plural(c['unreadable'], 'row', thousands=True)}"
    )
    if c["evaluated"] < c["rows_selected"]:
        lines.append("metrics are over the rows present only: not directly comparable to the published numbers")
    if not m:
        lines.append("no metrics: no row could be evaluated")
        return "\n".join(lines)
    lines.append("")
    rows: list[tuple[str, str, str]] = []
    if b.task == "retrieval":
        for k in ("R@1", "R@5", "R@10", "MedR"):  # both columns in one format per metric (24.0 beside 9.9)
            fmt = "g" if k == "MedR" else ".1f"
            p = pub.get(k)
            rows.append((k, format(m[k], fmt), "" if p is None else format(p, fmt)))
        rows.append(("MeanR", f"{m['MeanR']:.1f}", ""))
    else:
        rng = f"{pub['min']:.1f}-{pub['max']:.1f}" if "min" in pub else ""
        for k in ("split1", "split2", "split3"):
            if k in m:
                rows.append((f"top-1 {k}", f"{m[k]:.1f}", ""))
        rows.append(("top-1 mean", f"{m['mean']:.1f}", rng))
    w0 = max(len(r[0]) for r in rows + [("metric", "", "")])
    lines.append(f"{'metric':<{w0}}  {'this run':>9}  {'published':>9}")
    lines += [f"{a:<{w0}}  {x:>9}  {p:>9}" for a, x, p in rows]
    if b.task == "retrieval":
        lines.append(f"(ties: {result.ties}; {m.get('tied', 0)} caption(s) had a tied correct clip; "
                     f"{result.empty_captions} caption(s) had no known word)")
    return "\n".join(lines)


def out_folder(out: str | os.PathLike[str]) -> Path:
    """The ``--out`` folder, created if needed: ``NotAFolderError`` for a file, ``OutputError``
    (one line) when it cannot be created (read-only file system, permissions)."""
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise NotAFolderError(f"--out must be a folder, got a file: {folder}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(folder, exc) from exc
    return folder


def write_outputs(result: EvalResult, out: str | os.PathLike[str]) -> dict[str, Path]:
    """Write ``metrics.json``, ``embeddings.npz`` and ``results.txt`` into ``out`` (created)."""
    folder = out_folder(out)
    files = {"metrics": folder / "metrics.json", "embeddings": folder / "embeddings.npz", "table": folder / "results.txt"}
    data = json.dumps(result_dict(result), indent=2).encode() + b"\n"
    atomic_write_bytes(files["metrics"], data)
    items = result.benchmark.items
    arrays: dict[str, np.ndarray] = {
        "row": np.array([it.row for it in items], np.int64),
        "video_id": np.array([it.video_id for it in items], dtype=str),
        "mask": result.clips.mask,
        "clip_embeddings": result.clips.video,
    }
    if result.benchmark.task == "retrieval":
        arrays["text_embeddings"] = result.text if result.text is not None else np.zeros((len(items), 512), np.float32)
        arrays["text"] = np.array([it.text or "" for it in items], dtype=str)
        arrays["start"] = np.array([np.nan if it.start is None else it.start for it in items], np.float64)
        arrays["end"] = np.array([np.nan if it.end is None else it.end for it in items], np.float64)
    else:
        arrays["features"] = result.clips.features
        arrays["label"] = np.array([it.label or "" for it in items], dtype=str)
        arrays["splits"] = np.array([it.splits for it in items], np.int8).reshape(len(items), 3)
    with atomic_file(files["embeddings"]) as f:
        np.savez(f, **arrays)  # type: ignore[arg-type]
    table = (format_table(result) + "\n").encode()
    atomic_write_bytes(files["table"], table)
    return files
