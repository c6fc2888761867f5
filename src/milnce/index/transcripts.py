"""Transcripts in an index: subtitle cues stored in SQLite FTS5 beside the videos, and the speech
side of a search (which cues match a query, how well, and which words).

Tables (created by a writer; an index built before them, or opened read-only without them, has no
transcripts and searches visual only):

- ``cue_rows(id, video_id, start, end, lang, text)``: one row per cue, times in seconds of the video;
- ``cues_fts``: an FTS5 index over ``cue_rows.text`` (external content, ``porter unicode61
  remove_diacritics 2``: English words are stemmed, other languages are matched word for word with
  accents folded), kept in step by triggers;
- ``transcript_state(video_id, stamp, cues)``: what was read for a video (its sidecars' names,
  sizes and mtimes and the video's hash), so a changed or new subtitle file is read again without
  re-embedding an unchanged video. Deleting a video deletes its cues (a trigger).

The index's format version is unchanged: the tables are additive, an older milnce ignores them.

Speech score of a cue for a query (``speech_matches``): the query's words, each quoted for FTS5
(never an operator), are looked up one by one; word ``t`` found in ``n_t`` of the ``N`` cues weighs
``idf_t = ln(1 + (N - n_t + 0.5) / (n_t + 0.5))`` (BM25's non-negative IDF; FTS5's own ``bm25()`` is
clamped near zero in small collections). A cue scores the sum of the weights of the words it holds
divided by the sum over all the query's words: BM25 with term-frequency saturation off (a cue is one
line; a word rarely repeats) normalised by the query's ideal cue, so it lies in 0..1 whatever the
collection, and does not depend on ``k``. Words in more than ``COMMON_SHARE`` of the cues (and more
than ``COMMON_MIN``) are left out of both sums: they cannot tell cues apart. A cue scoring below
``MIN_SPEECH`` (it holds less than half of the query's weight: a stray common word) does not match:
a speech match is most of what was asked, and the speech windows stay few (search cost).
"""

from __future__ import annotations

import json
import logging
import math
import re
import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .database import db_path

__all__ = ["TRANSCRIPT_SCHEMA", "ensure_schema", "has_transcript_tables", "cue_statements", "Transcripts",
           "CueMatch", "query_words", "fts_phrase", "COMMON_SHARE", "COMMON_MIN", "MIN_SPEECH", "MAX_QUERY_WORDS"]

log = logging.getLogger("milnce.index")

TRANSCRIPT_SCHEMA = """
CREATE TABLE IF NOT EXISTS cue_rows (
    id INTEGER PRIMARY KEY,
    video_id INTEGER NOT NULL,
    start REAL NOT NULL,
    end REAL NOT NULL,
    lang TEXT,
    text TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS cue_rows_video ON cue_rows(video_id);
CREATE VIRTUAL TABLE IF NOT EXISTS cues_fts USING fts5(
    text, content='cue_rows', content_rowid='id', tokenize='porter unicode61 remove_diacritics 2');
CREATE TRIGGER IF NOT EXISTS cue_rows_ai AFTER INSERT ON cue_rows BEGIN
    INSERT INTO cues_fts(rowid, text) VALUES (new.id, new.text);
END;
CREATE TRIGGER IF NOT EXISTS cue_rows_ad AFTER DELETE ON cue_rows BEGIN
    INSERT INTO cues_fts(cues_fts, rowid, text) VALUES ('delete', old.id, old.text);
END;
CREATE TABLE IF NOT EXISTS transcript_state (
    video_id INTEGER PRIMARY KEY,
    stamp TEXT NOT NULL,
    cues INTEGER NOT NULL
);
CREATE TRIGGER IF NOT EXISTS videos_ad_transcripts AFTER DELETE ON videos BEGIN
    DELETE FROM cue_rows WHERE video_id = old.id;
    DELETE FROM transcript_state WHERE video_id = old.id;
END;
"""

COMMON_SHARE = 0.02  # a word in more than this share of the cues ...
COMMON_MIN = 1000  # ... and in more than this many is left out of the speech score
MIN_SPEECH = 0.5  # a cue holding less than half of the query's word weight does not match
MAX_QUERY_WORDS = 32
_WORD = re.compile(r"\w+", re.UNICODE)
_VIDEO_ID = "(SELECT id FROM videos WHERE path = ?)"


def ensure_schema(con: sqlite3.Connection) -> bool:
    """Create the transcript tables (a writer's connection); False when this SQLite has no FTS5."""
    try:
        con.executescript(TRANSCRIPT_SCHEMA)
        return True
    except sqlite3.OperationalError as exc:
        if "fts5" in str(exc).lower():
            log.warning("this Python's SQLite has no FTS5: transcripts are not stored (visual search only)")
            return False
        raise


def has_transcript_tables(con: sqlite3.Connection) -> bool:
    row = con.execute("SELECT count(*) FROM sqlite_master WHERE name IN ('cue_rows', 'cues_fts', "
                      "'transcript_state')").fetchone()
    return bool(row and row[0] == 3)


def cue_statements(path: str, tracks: Iterable[Any], stamp: Any) -> list[tuple[str, tuple[Any, ...]]]:
    """SQL statements replacing the cues of the video at ``path`` (an indexed path, as stored) by the
    cues of ``tracks`` (``milnce.video.subtitles.SubtitleTrack``) and recording ``stamp``; run in
    the transaction that records the video (its id is looked up by path inside it)."""
    key = db_path(path)
    stmts: list[tuple[str, tuple[Any, ...]]] = [(f"DELETE FROM cue_rows WHERE video_id = {_VIDEO_ID}", (key,))]
    n = 0
    for t in tracks:
        for c in t.cues:
            stmts.append((f"INSERT INTO cue_rows(video_id, start, end, lang, text) VALUES ({_VIDEO_ID}, ?, ?, ?, ?)",
                          (key, float(c.start), float(c.end), t.lang, c.text)))
            n += 1
    stmts.append((f"INSERT OR REPLACE INTO transcript_state(video_id, stamp, cues) VALUES ({_VIDEO_ID}, ?, ?)",
                  (key, json.dumps(stamp, sort_keys=True), n)))
    return stmts


def query_words(text: str) -> list[str]:
    """The words of a query (letters and digits, lower-case, each once, at most ``MAX_QUERY_WORDS``)."""
    out: dict[str, None] = {}
    for w in _WORD.findall(text.lower()):
        w = w.strip("_")
        if w:
            out[w] = None
    return list(out)[:MAX_QUERY_WORDS]


def fts_phrase(word: str) -> str:
    """A word as an FTS5 string (double-quoted, quotes doubled): never an operator or a column."""
    return '"' + word.replace('"', '""') + '"'


@dataclass
class CueMatch:
    """A cue that matched a query: its video, times, language, speech score (0..1) and its text as
    FTS5 marked it; ``text`` and ``matches`` (character spans ``[i, j)`` of the matched words in
    ``text``) are read from it when asked (only shown cues are)."""

    video_id: int
    start: float
    end: float
    marked: str
    lang: str | None
    score: float

    @property
    def text(self) -> str:
        return _spans(self.marked)[0]

    @property
    def matches(self) -> list[list[int]]:
        return _spans(self.marked)[1]

    def to_dict(self) -> dict[str, Any]:
        text, spans = _spans(self.marked)
        return {"start": self.start, "end": self.end, "text": text, "lang": self.lang, "matches": spans}


def _spans(marked: str) -> tuple[str, list[list[int]]]:
    """Text and match spans from FTS5 ``highlight()`` output marked with \\x01 .. \\x02."""
    out: list[str] = []
    spans: list[list[int]] = []
    pos = 0
    open_at = -1
    for ch in marked:
        if ch == "\x01":
            open_at = pos
        elif ch == "\x02":
            if open_at >= 0:
                spans.append([open_at, pos])
            open_at = -1
        else:
            out.append(ch)
            pos += 1
    return "".join(out), spans


class Transcripts:
    """The transcript tables of one index, read through the index's connection (under its lock)."""

    def __init__(self, con: sqlite3.Connection, lock: threading.RLock | threading.Lock) -> None:
        self.con = con
        self.lock = lock

    def stats(self) -> tuple[int, int]:
        """``(videos with transcripts, cues)``."""
        with self.lock:
            row = self.con.execute("SELECT count(*), coalesce(sum(cues), 0) FROM transcript_state WHERE cues > 0") \
                .fetchone()
        return int(row[0]), int(row[1])

    def stamps(self) -> dict[int, str]:
        """Each video's recorded transcript stamp (JSON text)."""
        with self.lock:
            return {int(v): str(s) for v, s in self.con.execute("SELECT video_id, stamp FROM transcript_state")}

    def video_ids(self) -> set[int]:
        with self.lock:
            return {int(v) for (v,) in self.con.execute("SELECT video_id FROM transcript_state WHERE cues > 0")}

    def speech_matches(self, text: str, videos: Iterable[int] | None = None,
                       limit: int = 200_000) -> list[CueMatch]:
        """The cues matching the words of ``text`` (each word quoted: never FTS5 syntax), with their
        speech score (module docstring) and matched spans; only cues of ``videos`` (the searched
        snapshot's: FTS reads the live database) when given."""
        words = query_words(text)
        if not words:
            return []
        with self.lock:
            n_cues = int(self.con.execute("SELECT count(*) FROM cue_rows").fetchone()[0])
            if n_cues == 0:
                return []
            common = max(COMMON_MIN, int(COMMON_SHARE * n_cues))
            weights: dict[str, float] = {}
            for w in words:
                n_t = int(self.con.execute("SELECT count(*) FROM cues_fts WHERE cues_fts MATCH ?",
                                           (fts_phrase(w),)).fetchone()[0])
                if n_t <= common:  # else too common to tell cues apart
                    weights[w] = math.log(1.0 + (n_cues - n_t + 0.5) / (n_t + 0.5))
            total = sum(weights.values())
            found = sorted((w for w in weights if weights[w] < math.log(1.0 + (n_cues + 0.5) / 0.5)),
                           key=lambda w: -weights[w])  # the words some cue holds, rarest first
            if not found or total <= 0:
                return []
            # A cue reaching MIN_SPEECH holds one of the rarest words whose weights add up to more
            # than (1 - MIN_SPEECH) of the total: read those words' cues, then the others' among them.
            lead, acc = [], 0.0
            for w in found:
                lead.append(w)
                acc += weights[w]
                if acc > (1.0 - MIN_SPEECH) * total:
                    break
            held: dict[int, float] = {}
            for w in lead:
                for (cid,) in self.con.execute("SELECT rowid FROM cues_fts WHERE cues_fts MATCH ?", (fts_phrase(w),)):
                    held[cid] = held.get(cid, 0.0) + weights[w] / total
            cand = json.dumps(sorted(held))
            for w in found[len(lead):]:
                for (cid,) in self.con.execute("SELECT rowid FROM cues_fts WHERE cues_fts MATCH ? AND rowid IN "
                                               "(SELECT value FROM json_each(?))", (fts_phrase(w), cand)):
                    held[cid] += weights[w] / total
            ids = sorted(c for c, sc in held.items() if sc >= MIN_SPEECH - 1e-12)[:int(limit)]
            if not ids:
                return []
            expr = " OR ".join(fts_phrase(w) for w in found)
            rows = self.con.execute(
                "SELECT r.id, r.video_id, r.start, r.end, r.lang, highlight(cues_fts, 0, char(1), char(2)) "
                "FROM cues_fts JOIN cue_rows r ON r.id = cues_fts.rowid WHERE cues_fts MATCH ? "
                "AND cues_fts.rowid IN (SELECT value FROM json_each(?))", (expr, json.dumps(ids))).fetchall()
        keep = None if videos is None else set(int(v) for v in videos)
        return [CueMatch(int(vid), float(start), float(end), str(marked), lang, min(1.0, held[cid]))
                for cid, vid, start, end, lang, marked in rows if keep is None or int(vid) in keep]
