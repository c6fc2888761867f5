"""What one process knows of an index folder's committed state: ``IndexState``.

It holds the folder's SQLite connection (``con``, used under ``lock``), the committed ``meta``,
the video rows by id (``rows``), the ids by path (``paths``) and the live window count
(``live``), and publishes them as an immutable ``milnce.index.snapshot.Snapshot``. An
``milnce.index.reader.IndexReader`` only reads it (``load`` and ``refresh`` read SQLite again);
the writer ``milnce.index.writer.Index`` changes it after each of its commits and calls
``changed()``: the next read publishes a new snapshot (lazily: a build commits far more often
than it reads). A search takes ``snapshot`` once and reads only it.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from .database import from_db, read_meta
from .records import VideoRow
from .snapshot import Snapshot
from .transcripts import has_transcript_tables
from .verify import check_snapshot

__all__ = ["IndexState"]


class IndexState:
    """The committed state of one opened index folder (see the module docstring)."""

    def __init__(self, directory: str, con: Any) -> None:
        self.directory = directory
        self.con = con
        self.lock = threading.RLock()  # around every use of ``con``
        self._publish_lock = threading.Lock()
        self._snap: Snapshot | None = None
        self._dirty = False
        self.meta: dict[str, Any] = {}
        self.rows: dict[int, VideoRow] = {}
        self.paths: dict[str, int] = {}
        self.live = 0
        self.has_cues = False
        self.load()

    def load(self) -> None:
        """Read the committed state from SQLite (checked: ``milnce.index.verify``) and publish it."""
        with self.lock:
            con = self.con
            con.execute("BEGIN")  # one snapshot for the settings, the row count and the videos
            try:
                meta = read_meta(con, self.directory)
                rows = con.execute(
                    "SELECT id, path, size, mtime, hash, duration, row_start, num_windows FROM videos ORDER BY row_start"
                ).fetchall()
                has_cues = has_transcript_tables(con)
            finally:
                con.execute("COMMIT")
        check_snapshot(self.directory, meta, rows)
        self.has_cues = has_cues  # the transcript tables exist (milnce.index.transcripts; none: visual only)
        self.meta = meta
        records = [VideoRow(r[0], from_db(r[1]), *r[2:]) for r in rows]
        self.rows = {r.id: r for r in records}
        self.paths = {r.path: r.id for r in records}
        self.live = sum(int(r.num_windows) for r in records)
        self.publish()

    def publish(self) -> None:
        """Make the current records the snapshot that reads see."""
        with self._publish_lock:
            old = self._snap
            self._snap = Snapshot(self.directory, self.meta, self.rows, previous=old)
            self._dirty = False

    def changed(self) -> None:
        """The records changed (a commit): the next read publishes them."""
        self._dirty = True

    @property
    def snapshot(self) -> Snapshot:
        """The current committed state (immutable; a later commit publishes a new one)."""
        if self._dirty:
            self.publish()
        assert self._snap is not None
        return self._snap

    def refresh(self) -> bool:
        """Reload if another process committed changes; returns whether it did."""
        with self.lock:
            row = self.con.execute("SELECT value FROM meta WHERE key='version'").fetchone()
        if row is not None and json.loads(row[0]) != self.meta.get("version", 0):
            self.load()  # running searches keep the snapshot they started with
            return True
        return False

    def close(self) -> None:
        """Close the connection (quietly) and the published snapshot's descriptors."""
        try:
            self.con.close()
        except Exception:  # noqa: BLE001
            pass
        if self._snap is not None:
            self._snap.close()
