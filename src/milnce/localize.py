"""Temporal localisation in one video: the score of every window over time, the best moments,
and a plot of the curve (``milnce localize``)."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .atomic import atomic_write_bytes
from .errors import MilnceError, UsageError
from .index import IndexMismatchError, SearchableIndex, iter_video_moments
from .protocols import Encoder
from .windows import WindowSettings

__all__ = ["Localization", "localize", "best_moments", "plot_localization", "PlotDependencyError"]


class PlotDependencyError(MilnceError, ImportError):
    """``--plot`` without matplotlib installed (one line on the command line)."""


@dataclass
class Localization:
    """Scores of one query against every window of one video."""

    path: str
    query: str
    starts: np.ndarray
    ends: np.ndarray
    scores: np.ndarray
    duration: float
    moments: list[tuple[float, float, float]] = field(default_factory=list)  # (start, end, score), best first

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "query": self.query,
            "duration": self.duration,
            "windows": [{"start": float(a), "end": float(b), "score": float(s)}
                        for a, b, s in zip(self.starts, self.ends, self.scores)],
            "moments": [{"start": a, "end": b, "score": s} for a, b, s in self.moments],
        }


def best_moments(starts: np.ndarray, ends: np.ndarray, scores: np.ndarray, k: int = 5,
                 merge: bool = True) -> list[tuple[float, float, float]]:
    """The ``k`` best moments ``(start, end, score)`` of a score curve, best first: the moments of
    ``milnce.index.moments`` (independent of ``k``, as ``Index.search`` ranks them); ``merge=False``:
    the ``k`` best single windows."""
    n = len(scores)
    if n == 0 or k < 1:
        return []
    s = np.asarray(scores, dtype=np.float32)
    out = []
    for a, b, _, sc in iter_video_moments(s, None if merge else -np.inf):
        out.append((float(starts[a]), float(ends[b]), float(sc)))
        if len(out) == k:
            break
    return out


def localize(model: Encoder, path: str | os.PathLike[str], query: str, *, k: int = 5, fps: float | None = None,
             num_frames: int | None = None, size: int | None = None, stride: int | None = None,
             batch_size: int | None = None,
             merge: bool = True, index: SearchableIndex | None = None, progress: bool = False,
             allow_gaps: bool = False) -> Localization:
    """Score ``query`` against every window of the video at ``path``.

    Window settings: the given ones over the model's conventions. With an open ``index`` (a
    ``milnce.index.IndexReader``, or any ``SearchableIndex``) whose settings agree with the given
    ones, the index's settings are used, and its stored windows too when it holds this video
    unchanged; an index with other settings is ignored (the video is embedded again). A stride longer than the window is refused unless
    ``allow_gaps`` (an index's own settings are taken as they are)."""
    if not isinstance(query, str):
        raise UsageError("the query is empty")
    problem = model.tokenizer.query_problem(query)
    if problem:
        raise UsageError(problem)
    given = {"fps": fps, "num_frames": num_frames, "size": size, "stride": stride}
    settings = WindowSettings.for_model(model, allow_gaps=allow_gaps, **given)
    if index is not None:
        try:
            index.check_settings({k_: v for k_, v in given.items() if v is not None})
        except IndexMismatchError:
            index = None  # other windows asked for: embed the video again
        else:
            settings = WindowSettings.from_dict(index.settings).with_(**given)
            allow_gaps = True  # the index's windows, whatever they are
    starts = ends = emb = None
    duration = float("nan")
    if index is not None:
        rec = index.video_by_path(path)
        if rec is not None and rec.exists:
            st = os.stat(rec.path)
            if st.st_size == rec.size and float(st.st_mtime) == rec.mtime:
                starts, ends, emb = index.windows(rec.id)
                duration = rec.duration
    if emb is None:
        ve = model.encode_video_file(path, fps=settings.fps, num_frames=settings.num_frames, size=settings.size,
                                     stride=settings.stride, crop=settings.crop, batch_size=batch_size,
                                     progress=progress, allow_gaps=allow_gaps)
        starts, ends, emb, duration = ve.starts, ve.ends, ve.embeddings, ve.duration
    text = model.encode_text([query]).detach().cpu().numpy().astype(np.float32)
    scores = (text @ np.asarray(emb, dtype=np.float32).T)[0]
    assert starts is not None and ends is not None and emb is not None
    if duration != duration and len(ends):  # nan
        duration = float(ends[-1])
    loc = Localization(path=os.path.abspath(os.fspath(path)), query=query, starts=np.asarray(starts),
                       ends=np.asarray(ends), scores=scores, duration=float(duration))
    loc.moments = best_moments(loc.starts, loc.ends, scores, k=k, merge=merge)
    return loc


def plot_localization(loc: Localization, out: str | os.PathLike[str]) -> str:
    """Write a PNG of the score curve (window centres) with the best moments shaded."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise PlotDependencyError("--plot needs matplotlib: pip install matplotlib") from exc
    centers = (loc.starts + loc.ends) / 2
    fig, ax = plt.subplots(figsize=(10, 3.2), dpi=100)
    try:
        ax.plot(centers, loc.scores, color="#1f77b4", lw=1.5, marker="." if len(centers) < 80 else None,
                label="window score")
        for i, (a, b, s) in enumerate(loc.moments):
            ax.axvspan(a, b, color="#ff7f0e", alpha=0.25 if i else 0.4, lw=0)
            ax.annotate(f"#{i + 1} {s:.3f}", xy=((a + b) / 2, s), xytext=(0, 4), textcoords="offset points",
                        ha="center", fontsize=8)
        ax.set_xlabel("time (s)")
        ax.set_ylabel("score (dot product)")
        ax.set_title(f"{os.path.basename(loc.path)}: \u201c{loc.query}\u201d", fontsize=10)
        if len(centers):
            ax.set_xlim(0, max(float(loc.ends.max()), loc.duration if loc.duration == loc.duration else 0))
        ax.grid(alpha=0.3)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    atomic_write_bytes(out, buf.getvalue())  # OutputError (one line) for a read-only or missing folder
    return os.fspath(out)
