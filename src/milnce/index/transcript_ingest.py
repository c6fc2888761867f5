"""Reading a video's subtitles while indexing (``build_index``, ``index_features``): sidecar files
and embedded text streams (``milnce.video.subtitles``) turned into ``(tracks, stamp)`` for
``Index.add_videos``; an unchanged video whose subtitle files changed (or were added, removed, or
another ``--subtitle-langs`` chosen) gets its cues replaced without being embedded again."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from typing import Any

from ..plural import plural
from ..video import SubtitleError, SubtitleTrack, find_sidecars, read_embedded, read_sidecar, sidecar_stamp
from .backends import AnyWriter
from .records import IndexReport

__all__ = ["TranscriptIngest"]

log = logging.getLogger("milnce.index")


class TranscriptIngest:
    """The subtitle side of one indexing run over ``idx``: ``langs`` (None: every language),
    ``embedded``: also read the streams inside the video files (not for feature files)."""

    def __init__(self, idx: AnyWriter, report: IndexReport, langs: Sequence[str] | None = None,
                 embedded: bool = True) -> None:
        self.idx = idx
        self.report = report
        self.langs = None if langs is None else list(langs)
        self.embedded = embedded
        store = idx.transcript_store()
        self.enabled = store is not None and not idx.readonly
        self.stamps = store.stamps() if store is not None else {}
        self._names: dict[str, list[str]] = {}

    def _listing(self, folder: str) -> list[str]:
        if folder not in self._names:
            try:
                self._names[folder] = os.listdir(folder or ".")
            except OSError:
                self._names[folder] = []
        return self._names[folder]

    def _sidecars(self, near: str) -> list[tuple[str, str | None]]:
        return find_sidecars(near, self.langs, self._listing(os.path.dirname(near)))

    def stamp(self, video: str, content_hash: str, near: str | None = None) -> dict[str, Any]:
        """What the video's transcript was read from: its sidecars (name, size, mtime), the
        video's content hash (embedded streams) and the languages chosen."""
        cars = self._sidecars(near or video)
        return {"sidecars": sidecar_stamp(p for p, _ in cars), "hash": content_hash if self.embedded else "",
                "langs": self.langs}

    def read(self, video: str, content_hash: str, near: str | None = None) -> tuple[list[SubtitleTrack], Any] | None:
        """``(tracks, stamp)`` of a video (``near``: the file whose sidecars count, default the
        video itself); notes (skipped cues, guessed encodings, unreadable files or streams) go to
        the report, one line each. None when the index has no transcript tables."""
        if not self.enabled:
            return None
        tracks: list[SubtitleTrack] = []
        notes = self.report.subtitle_notes
        for path, lang in self._sidecars(near or video):
            try:
                t = read_sidecar(path, lang)
            except SubtitleError as exc:
                notes.append((path, f"{exc}; not used"))
                continue
            if t.encoding not in ("utf-8", "utf-16"):
                notes.append((path, f"not UTF-8: read as {t.encoding}"))
            if t.skipped:
                notes.append((path, f"{plural(t.skipped, 'cue')} skipped (malformed time line, end before start, "
                                    "or no text)"))
            tracks.append(t)
        if self.embedded:
            inner, problems = read_embedded(video, self.langs)
            tracks.extend(inner)
            notes.extend((video, f"{p}; the video is indexed without it") for p in problems)
        self.report.subtitles_read += 1
        return tracks, self.stamp(video, content_hash, near)

    def refresh(self, video: str, video_id: int, content_hash: str, near: str | None = None) -> None:
        """For a video whose windows stay: replace its cues when its subtitle stamp changed."""
        if not self.enabled:
            return
        old = self.stamps.get(int(video_id))
        if old is not None and old == json.dumps(self.stamp(video, content_hash, near), sort_keys=True):
            return
        got = self.read(video, content_hash, near)
        if got is not None:
            self.idx.write_transcript(video, got[0], got[1])

    def finish(self) -> None:
        """Count the index's videos with transcripts into the report."""
        if self.idx.transcript_store() is not None:
            self.report.transcripts, self.report.cues = self.idx.transcript_counts()
