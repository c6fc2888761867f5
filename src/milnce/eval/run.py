"""``evaluate()``: one benchmark, end to end: rows -> video files -> window embeddings (through
the extraction pipeline, one job per video, cached) -> clip embeddings -> metrics."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MilnceError, UsageError
from ..runoptions import RunOptions
from ..video import VideoJob, failure_reason, not_readable, run_jobs
from .cache import EmbeddingCache, as_cache
from .datasets import Benchmark, EvalItem, VideoResolver, load_benchmark
from .linear_probe import DEFAULT_CS, linear_probe, source_group
from .metrics import retrieval_metrics
from .protocol import TIE_RULES, EvalSettings, window_starts
from .ucf101 import ucf_group

__all__ = ["ClipEmbeddings", "EvalResult", "embed_clips", "encode_captions", "evaluate"]

Runner = Callable[..., Any]


@dataclass
class ClipEmbeddings:
    """Per annotation row: mean window embedding (``N x 512``), mean ``mixed_5c`` (``N x 1024``),
    and which rows have them (``mask``); the rest are listed in ``missing``/``unreadable``."""

    video: np.ndarray
    features: np.ndarray
    mask: np.ndarray
    found: np.ndarray  # rows whose video file was found
    missing: dict[str, str] = field(default_factory=dict)  # video_id -> where it was looked for
    unreadable: dict[str, str] = field(default_factory=dict)  # video_id -> reason
    windows: int = 0  # windows decoded and embedded in this run (0 when all came from the cache)
    cached_videos: int = 0
    videos: int = 0


@dataclass
class EvalResult:
    """What ``evaluate`` measured, with everything needed to write the report files."""

    benchmark: Benchmark
    settings: EvalSettings
    metrics: dict[str, Any]
    clips: ClipEmbeddings
    text: np.ndarray | None
    weights_id: str
    seconds: float
    ties: str = "pessimistic"
    empty_captions: int = 0
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def counts(self) -> dict[str, int]:
        m, found = self.clips.mask, self.clips.found
        return {
            "rows_in_annotations": self.benchmark.total_rows,
            "rows_selected": len(m),
            "evaluated": int(m.sum()),
            "missing": int((~found).sum()),
            "unreadable": int((found & ~m).sum()),
            "videos_missing": len(self.clips.missing),
            "videos_unreadable": len(self.clips.unreadable),
        }


# ------------------------------------------------------------------------------------------
# Text


def encode_captions(model: Any, texts: Sequence[str], max_words: int, batch_size: int = 512) -> tuple[np.ndarray, int]:
    """Caption embeddings (``N x 512`` float32) with ``max_words`` words per caption, and how many
    captions had no known word (they get the all-padding embedding)."""
    import torch

    from ..text import Tokenizer

    base = model.tokenizer
    tok = base if base.max_words == max_words else Tokenizer(base.vocab, max_words=max_words)
    text_module = model.net.text_module
    device = model.device
    out, empty = [], 0
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            ids = tok(list(texts[i: i + batch_size]))
            empty += int((ids == 0).all(dim=1).sum())
            out.append(text_module.encode_ids(ids.to(device)).float().cpu().numpy())
    return np.concatenate(out).astype(np.float32), empty


# ------------------------------------------------------------------------------------------
# Video


def header_duration(path: Path) -> float:
    """The video's duration from its header (no frame is decoded)."""
    import av

    try:
        with av.open(str(path)) as container:
            streams = container.streams.video
            if not streams:
                raise MilnceError("the file has no video stream")
            s = streams[0]
            d = None
            if s.duration is not None and s.time_base:
                d = float(s.duration * s.time_base)
            if (d is None or d <= 0) and container.duration:
                d = container.duration / av.time_base
    except av.FFmpegError as exc:
        raise not_readable(str(path), exc) from None  # the decoder's own line (index, extract)
    if d is None or not math.isfinite(d) or d <= 0:
        raise MilnceError("the file does not say how long the video is (no duration in its header)")
    return float(d)


def _clip_window_starts(items: Sequence[EvalItem], duration: float | None, settings: EvalSettings) -> list[np.ndarray]:
    out = []
    for it in items:
        start = it.start if it.start is not None else 0.0
        end = it.end if it.end is not None else duration
        assert end is not None
        out.append(window_starts(start, end, settings))
    return out


def _match(wanted: np.ndarray, got: np.ndarray) -> np.ndarray:
    """Index into ``got`` of each wanted start (-1 where the pipeline returned no such window)."""
    idx = np.full(len(wanted), -1, np.int64)
    if len(got) == 0:
        return idx
    order = np.argsort(got, kind="stable")
    g = got[order]
    pos = np.clip(np.searchsorted(g, wanted), 0, len(g) - 1)
    for j, (w, p) in enumerate(zip(wanted, pos)):
        for q in (p - 1, p, p + 1):
            if 0 <= q < len(g) and abs(g[q] - w) <= 1e-6 * max(1.0, abs(w)):
                idx[j] = order[q]
                break
    return idx


_Pending = tuple[Path, list[EvalItem], list[np.ndarray], np.ndarray, str | None, float]


def _group_by_video(items: Sequence[EvalItem], paths: dict[int, Path | None],
                    res: ClipEmbeddings) -> dict[Path, list[EvalItem]]:
    """The rows of each found video file, in first-seen order; rows without one go to ``res.missing``."""
    groups: dict[Path, list[EvalItem]] = {}
    for it in items:
        p = paths.get(it.row)
        if p is None:
            res.missing[it.video_id] = it.folder or ""
        else:
            groups.setdefault(p, []).append(it)
    return groups


def _finish(res: ClipEmbeddings, pos: dict[int, int], video_items: Sequence[EvalItem], per_clip: list[np.ndarray],
            uniq: np.ndarray, emb: np.ndarray, feats: np.ndarray) -> None:
    """Each clip's mean over its readable windows (of ``uniq`` starts) into ``res``; a clip with
    none is listed unreadable."""
    for it, st in zip(video_items, per_clip):
        idx = np.searchsorted(uniq, st)
        ok = idx[(idx < len(uniq))]
        ok = ok[np.isfinite(emb[ok]).all(axis=1)] if len(ok) else ok
        if len(ok) == 0:
            res.unreadable.setdefault(it.video_id, f"no window of [{st[0]:g}, {st[-1]:g}] s could be read")
            continue
        i = pos[it.row]
        res.video[i] = emb[ok].mean(axis=0)
        res.features[i] = feats[ok].mean(axis=0)
        res.mask[i] = True


def _plan(model: Any, groups: dict[Path, list[EvalItem]], settings: EvalSettings, cache: EmbeddingCache | None,
          res: ClipEmbeddings, pos: dict[int, int]) -> dict[int, _Pending]:
    """Fill ``res`` from the cache where it can; the videos left to extract (group index ->
    (path, rows, each row's window starts, the distinct starts, cache key, duration)). A video
    whose file cannot be stat'ed or whose duration is unknown is listed unreadable."""
    weights_id = str(getattr(model, "weights_id", "unknown"))
    vkey = settings.video_key()
    pending: dict[int, _Pending] = {}
    for gi, (path, video_items) in enumerate(groups.items()):
        spec = [(it.start, it.end) for it in video_items]
        key = None
        if cache is not None:
            try:
                key = EmbeddingCache.key(path, vkey, spec, weights_id)
            except OSError as exc:
                for it in video_items:
                    res.unreadable[it.video_id] = f"cannot stat the file: {exc}"
                continue
            hit = cache.get(key)
            if hit is not None:
                duration = float(hit["duration"])
                per_clip = _clip_window_starts(video_items, duration, settings)
                _finish(res, pos, video_items, per_clip, hit["starts"], hit["video_embedding"], hit["mixed_5c"])
                res.cached_videos += 1
                continue
        duration = float("nan")
        if any(it.end is None for it in video_items):
            try:
                duration = header_duration(path)
            except (MilnceError, OSError, ValueError) as exc:
                for it in video_items:
                    res.unreadable[it.video_id] = failure_reason(str(exc), str(path))
                continue
        per_clip = _clip_window_starts(video_items, duration, settings)
        uniq = np.unique(np.concatenate(per_clip))
        pending[gi] = (path, video_items, per_clip, uniq, key, duration)
    return pending


def _aligned(r: Any, uniq: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(embeddings, mixed_5c, which were returned) of a pipeline result, one row per wanted start
    of ``uniq`` (NaN where the pipeline returned no such window)."""
    got = np.asarray(r.starts, np.float64)
    emb_all = np.asarray(r.embeddings, np.float32)
    feat_all = (np.asarray(r.features, np.float32) if r.features is not None
                else np.full((len(got), 1024), np.nan, np.float32))
    idx = _match(uniq, got)
    emb = np.full((len(uniq), emb_all.shape[1] if emb_all.ndim == 2 else 512), np.nan, np.float32)
    feats = np.full((len(uniq), 1024), np.nan, np.float32)
    have = idx >= 0
    emb[have] = emb_all[idx[have]]
    feats[have] = feat_all[idx[have]]
    return emb, feats, have


def _extract(model: Any, pending: dict[int, _Pending], settings: EvalSettings, cache: EmbeddingCache | None,
             res: ClipEmbeddings, pos: dict[int, int], runner: Runner | None, kwargs: dict[str, Any]) -> None:
    """Run the pipeline over the ``pending`` videos (one job each) into ``res``, caching each
    complete result; a video with no result is listed unreadable."""
    if not pending:
        return
    run = runner or run_jobs
    job_objs = [VideoJob(str(path), key=gi, starts=[float(s) for s in uniq])
                for gi, (path, _, _, uniq, _, _) in pending.items()]
    done = set()
    for r in run(model, job_objs, settings.window, **kwargs):
        if not isinstance(r.key, int) or r.key not in pending or r.key in done:
            continue
        gi = r.key
        done.add(gi)
        path, video_items, per_clip, uniq, key, duration = pending[gi]
        if r.error:
            for it in video_items:
                res.unreadable[it.video_id] = failure_reason(str(r.error), str(path))
            continue
        emb, feats, have = _aligned(r, uniq)
        res.windows += int(have.sum())
        dur = float(r.duration) if r.duration is not None and math.isfinite(float(r.duration)) else duration
        _finish(res, pos, video_items, per_clip, uniq, emb, feats)
        if cache is not None and key is not None and have.all():
            cache.put(key, {"starts": uniq, "video_embedding": emb, "mixed_5c": feats,
                            "duration": np.asarray(dur if math.isfinite(dur) else duration, np.float64)})
    for gi in set(pending) - done:
        for it in pending[gi][1]:
            res.unreadable.setdefault(it.video_id, "the extraction pipeline returned no result for this video")


def embed_clips(
    model: Any,
    items: Sequence[EvalItem],
    paths: dict[int, Path | None],
    settings: EvalSettings,
    *,
    cache: EmbeddingCache | None = None,
    runner: Runner | None = None,
    workers: int | None = None,
    batch_size: int | None = None,
    progress: bool = False,
    run: RunOptions | None = None,
) -> ClipEmbeddings:
    """Embed every row's clip under the protocol: one pipeline job per video file (all its clips'
    window starts, each distinct start once), cached per video. Rows whose video is missing or
    unreadable are left out of ``mask`` and listed. ``run``: resolved ``RunOptions`` (the
    command's) instead of ``workers``/``batch_size``."""
    n = len(items)
    res = ClipEmbeddings(np.zeros((n, 512), np.float32), np.zeros((n, 1024), np.float32), np.zeros(n, bool),
                         np.array([paths.get(it.row) is not None for it in items], bool))
    pos = {it.row: i for i, it in enumerate(items)}
    groups = _group_by_video(items, paths, res)
    res.videos = len(groups)
    pending = _plan(model, groups, settings, cache, res, pos)
    kwargs: dict[str, Any] = {"pad": settings.pad, "features": True, "progress": progress}
    if run is not None:
        if (batch_size, workers) != (None, None):
            raise UsageError("give either run= (RunOptions) or workers/batch_size, not both")
        kwargs["options"] = run
    else:
        kwargs.update(batch_size=batch_size, workers=workers)
    _extract(model, pending, settings, cache, res, pos, runner, kwargs)
    return res


# ------------------------------------------------------------------------------------------
# The whole benchmark


def evaluate(
    model: Any,
    benchmark: str | Benchmark,
    videos: str | os.PathLike[str],
    *,
    annotations: str | os.PathLike[str] | None = None,
    settings: EvalSettings | None = None,
    limit: int | None = None,
    cache: EmbeddingCache | str | os.PathLike[str] | bool | None = True,
    workers: int | None = None,
    batch_size: int | None = None,
    ties: str = "pessimistic",
    cs: Sequence[float] = DEFAULT_CS,
    seed: int = 0,
    progress: bool = False,
    runner: Runner | None = None,
    run: RunOptions | None = None,
) -> EvalResult:
    """Evaluate ``model`` on ``benchmark`` (``"youcook2"``, ``"msrvtt"``, ``"hmdb51"``) with the
    videos under ``videos``. ``cache``: ``True`` = ``$MILNCE_HOME/eval-cache``, a folder, an
    ``EmbeddingCache``, or ``False``/``None`` for none. Metrics are over the rows whose video was
    found and read; the rest are counted and listed in the result. ``run``: resolved
    ``milnce.runoptions.RunOptions`` instead of ``workers``/``batch_size``."""
    t0 = time.perf_counter()
    bench = benchmark if isinstance(benchmark, Benchmark) else load_benchmark(benchmark, annotations, limit)
    settings = settings or EvalSettings.for_benchmark(bench.name)
    if ties not in TIE_RULES:
        raise UsageError(f"ties must be one of {', '.join(TIE_RULES)}, got {ties!r}")
    cache = as_cache(cache)
    resolver = VideoResolver(videos, bench.name)
    paths = resolver.resolve_all(bench.items)
    clips = embed_clips(model, bench.items, paths, settings, cache=cache, runner=runner, workers=workers,
                        batch_size=batch_size, progress=progress, run=run)
    m = clips.mask
    text, empty = None, 0
    metrics: dict[str, Any]
    if bench.task == "retrieval":
        texts = [it.text or "" for it in bench.items]
        text, empty = encode_captions(model, texts, settings.max_words)
        if m.any():
            scores = text[m].astype(np.float64) @ clips.video[m].astype(np.float64).T
            metrics = retrieval_metrics(scores, ties=ties)
        else:
            metrics = {}
    else:
        if m.sum() == 0:
            metrics = {}
        else:
            sel = [it for it, keep in zip(bench.items, m) if keep]
            group = ucf_group if bench.name == "ucf101" else source_group
            probe = linear_probe(clips.features[m], [it.label or "" for it in sel], np.array([it.splits for it in sel]),
                                 groups=[group(it.video_id) for it in sel], cs=cs, seed=seed)
            metrics = {**{k: v for k, v in probe.top1.items()}, "mean": probe.mean, "probe": probe.to_dict()}
    info = {"cache": str(cache.folder) if cache is not None else None,
            "cached_videos": clips.cached_videos, "videos": clips.videos, "windows_embedded": clips.windows}
    return EvalResult(bench, settings, metrics, clips, text, str(getattr(model, "weights_id", "unknown")),
                      time.perf_counter() - t0, ties=ties, empty_captions=empty, info=info)
