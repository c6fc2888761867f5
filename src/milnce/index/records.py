"""The records an index holds and returns: ``Moment`` (a search result), ``VideoRecord`` (an indexed
video), ``IndexReport`` (what ``build_index`` did), and the stored rows as named tuples."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple, Protocol

import numpy as np

from ..plural import plural
from ..printable import show_path
from .layout import ERROR_LOG

__all__ = ["Moment", "VideoRecord", "IndexReport", "VideoRow", "VideoWindowsLike"]


class VideoWindowsLike(Protocol):
    """What ``Index.add_video`` stores (a ``milnce.video.VideoWindows``, or anything with its arrays)."""

    starts: np.ndarray
    ends: np.ndarray
    embeddings: np.ndarray
    duration: float



class VideoRow(NamedTuple):
    """A row of the ``videos`` table: the video's windows are store rows ``row_start ..
    row_start + num_windows - 1``."""

    id: int
    path: str
    size: int
    mtime: float
    hash: str
    duration: float
    row_start: int
    num_windows: int


@dataclass
class Moment:
    """A stretch of one video that matches a query (``milnce.index.moments`` defines it).

    ``score``: the dot product of the query with the moment's peak window (what ranks results);
    ``peak``: that window's start (seconds). Readable companions of the raw score: ``cosine``, the
    cosine similarity of the query and the peak window (-1..1), and ``percentile``, the share (in %)
    of the index's windows that score lower for this query (exact up to 8,192 windows, else
    estimated on a fixed sample of 8,192 windows spread over the index). Hybrid and speech searches
    (``milnce.index.hybrid``) fill ``visual_score`` (the peak's dot product), ``speech_score`` (the
    peak's speech score, 0..1) and ``cues`` (the matched cues overlapping the moment: ``start``,
    ``end``, ``text``, ``lang``, ``matches``: character spans of the matched words); ``score`` is
    then the fused one. Visual searches leave them None."""

    video_id: int
    path: str
    start: float
    end: float
    score: float
    exists: bool
    peak: float | None = None
    cosine: float | None = None
    percentile: float | None = None
    visual_score: float | None = None
    speech_score: float | None = None
    cues: list[dict[str, Any]] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class VideoRecord:
    """One indexed video as users see it (``Index.videos()``); ``exists``: the file is still there."""

    id: int
    path: str
    duration: float
    num_windows: int
    size: int
    mtime: float
    exists: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class IndexReport:
    """What ``build_index`` did."""

    directory: str
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    moved: list[tuple[str, str]] = field(default_factory=list)
    unchanged: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    previously_failed: int = 0
    skipped_failures: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) failed before
    pruned: list[str] = field(default_factory=list)
    windows_added: int = 0
    video_seconds: float = 0.0
    embed_seconds: float = 0.0
    elapsed: float = 0.0
    num_videos: int = 0
    num_windows: int = 0
    compacted: bool = False
    ann: dict[str, Any] | None = None
    transcripts: int = 0  # videos of the index with subtitle cues (milnce.index.transcripts)
    cues: int = 0
    subtitles_read: int = 0  # videos whose subtitles were read this run
    subtitle_notes: list[tuple[str, str]] = field(default_factory=list)  # (source, what was wrong or guessed)

    @property
    def speed(self) -> float:
        """Video seconds embedded per wall-clock second of embedding."""
        return self.video_seconds / self.embed_seconds if self.embed_seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (``milnce index --json``), with ``speed``."""
        d = asdict(self)
        d["moved"] = [list(m) for m in self.moved]
        d["failed"] = [list(f) for f in self.failed]
        d["skipped_failures"] = [list(f) for f in self.skipped_failures]
        d["subtitle_notes"] = [list(f) for f in self.subtitle_notes]
        d["speed"] = self.speed
        return d

    def summary(self) -> str:
        parts = [f"{len(self.added)} added", f"{len(self.updated)} re-indexed", f"{self.unchanged} unchanged"]
        if self.moved:
            parts.append(f"{len(self.moved)} moved")
        if self.pruned:
            parts.append(f"{len(self.pruned)} pruned")
        if self.failed:
            parts.append(f"{len(self.failed)} failed")
        if self.previously_failed:
            parts.append(f"{self.previously_failed} skipped (failed before; --retry-errors)")
        lines = [f"{show_path(self.directory)}: " + ", ".join(parts),
                 f"index: {plural(self.num_videos, 'video')}, {plural(self.num_windows, 'window')}"]
        if self.video_seconds:
            lines.append(f"embedded {self.video_seconds / 3600:.3f} video-hours ({plural(self.windows_added, 'window')}) "
                         f"in {self.embed_seconds:.1f} s: {self.speed:.2f}x real time")
        lines.append(f"transcripts: {self.transcripts} of {plural(self.num_videos, 'video')} ({plural(self.cues, 'cue')}"
                     f"{'; subtitles read for ' + plural(self.subtitles_read, 'video') if self.subtitles_read else ''})")
        for where, what in self.subtitle_notes[:10]:
            lines.append(f"  subtitles: {show_path(where)}: {show_path(what)}")
        if len(self.subtitle_notes) > 10:
            lines.append(f"  ... and {len(self.subtitle_notes) - 10} more subtitle notes (milnce index --json lists them)")
        if (self.failed or self.skipped_failures) and os.path.isfile(os.path.join(self.directory, ERROR_LOG)):
            lines.append(f"unreadable videos are listed in {show_path(os.path.join(self.directory, ERROR_LOG))}")
        if self.ann and self.ann.get("skipped"):
            lines.append(f"ANN: not built: {self.ann['reason']}")
        elif self.ann:
            lines.append(f"ANN: {self.ann.get('kind')} over {plural(int(self.ann.get('rows') or 0), 'window')}, "
                         f"recall@10 vs exact = {self.ann.get('recall_at_10', float('nan')):.3f} "
                         f"(nprobe {self.ann.get('nprobe')})")
        return "\n".join(lines)

