"""Writing an index: ``Index``, the one writer of an index folder (see ``milnce.index``): creating
it, adding, updating and removing videos, recording failures, compaction and the ANN index. An
``Index`` is an ``milnce.index.reader.IndexReader`` that also holds the writer lock (``.lock``):
it reads its own records and searches what it wrote. Each commit publishes a new immutable
``milnce.index.snapshot.Snapshot`` (lazily, on the next read); SQLite is in
``milnce.index.database``, the store files below it in ``milnce.index.rowfiles``.

Crash safety: a video's rows are appended and fsync'ed *before* the SQLite transaction that
records them (with the committed row count and the video's subtitle cues, ``milnce.index.transcripts``)
commits. A crash or a full disk leaves at worst an
unreferenced tail, which the next writer truncates; readers only ever map the committed rows.
Rows of re-indexed or pruned videos become dead and are skipped; when they exceed a quarter of
the store, the live rows are rewritten into a new generation ``G`` (also committed last).
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict
from typing import Any, Literal, overload

import numpy as np

from ..errors import NotAFolderError, UsageError
from ..printable import show_path
from ..protocols import Encoder
from ..windows import WindowSettings
from . import rowfiles as rf
from .ann import build_ann, is_ann_name
from .database import SCHEMA, connect, db_path, sqlite_reason
from .errors import IndexFolderError, IndexWriteError
from .layout import norm_path, now, user_path
from .lock import acquire_lock
from .reader import IndexReader, index_database
from .records import VideoRow, VideoWindowsLike
from .screen import quantize_rows
from .snapshot import store_path
from .transcripts import cue_statements, ensure_schema
from .verify import check_settings

__all__ = ["Index"]


class Index(IndexReader):
    """An index folder opened for writing (the one writer: it holds the lock until ``close``);
    every read and search of ``IndexReader`` sees what it committed.

    ``Index.create(folder, model)`` / ``Index.create_for(folder, weights_id, window)`` create or
    reopen one; ``Index.open(folder, model)`` opens one read-only (an ``IndexReader``),
    ``Index.open(folder, readonly=False)`` for writing.
    """

    readonly = False

    def __init__(self, directory: str, con: sqlite3.Connection, model: Encoder | None = None, *,
                 lock_fd: int) -> None:
        self._lock_fd: int | None = lock_fd
        self.cues_ok = ensure_schema(con)  # the transcript tables (writers create them; milnce.index.transcripts)
        super().__init__(directory, con, model)

    # -- opening ------------------------------------------------------------------------------

    @overload  # type: ignore[override]
    @classmethod
    def open(cls, directory: str | os.PathLike[str], model: Encoder | None = None, *,
             readonly: Literal[True] = True) -> IndexReader: ...

    @overload
    @classmethod
    def open(cls, directory: str | os.PathLike[str], model: Encoder | None = None, *,
             readonly: Literal[False]) -> Index: ...

    @overload
    @classmethod
    def open(cls, directory: str | os.PathLike[str], model: Encoder | None = None, *,
             readonly: bool = True) -> IndexReader: ...

    @classmethod
    def open(cls, directory: str | os.PathLike[str], model: Encoder | None = None, *,
             readonly: bool = True) -> IndexReader:
        """Open an existing index. ``model``: a ``MILNCE`` whose weights built the index (for
        text queries). Read-only by default (an ``IndexReader``, as ``IndexReader.open``);
        ``readonly=False`` takes the writer lock (one writer at a time) and gives an ``Index``."""
        if readonly:
            return IndexReader.open(directory, model)
        d, db = index_database(directory)
        lock_fd = acquire_lock(d)
        try:
            con = connect(db, False)
            con.executescript(SCHEMA)
            idx = cls(d, con, model, lock_fd=lock_fd)
        except sqlite3.DatabaseError as exc:
            os.close(lock_fd)
            raise IndexFolderError(f"{db}: not a readable index database ({exc})") from exc
        except BaseException:
            os.close(lock_fd)
            raise
        try:
            if model is not None:
                idx.check_model(model)
            idx._truncate_tail()
        except BaseException:
            idx.close()
            raise
        return idx

    @classmethod
    def create(cls, directory: str | os.PathLike[str], model: Encoder, window: WindowSettings | None = None, *,
               roots: Sequence[str | os.PathLike[str]] = ()) -> Index:
        """Open ``directory`` for writing, creating the index if there is none yet. ``window``: the
        index's windows (``WindowSettings``; default: an existing index's own, a new index's
        ``WindowSettings.for_model(model)``); an existing index must have these windows
        (``IndexMismatchError``). ``roots``: collection roots to record, see ``milnce.index.roots``."""
        idx = cls.create_for(directory, model.weights_id, window if window is not None else WindowSettings.for_model(model),
                             weights_name=getattr(getattr(model, "info", None), "name", None), roots=roots,
                             keep_existing=window is None)
        source = getattr(model, "weights_source", None)  # where to load the weights again (milnce.index.source)
        if source and idx.meta.get("weights_source") != source:
            idx._commit([], weights_source=source)
        idx.model = model
        return idx

    @classmethod
    def create_for(cls, directory: str | os.PathLike[str], weights_id: str, window: WindowSettings, *,
                   weights_name: str | None = None, roots: Sequence[str | os.PathLike[str]] = (),
                   keep_existing: bool = False) -> Index:
        """Open ``directory`` for writing, creating an index of embeddings made by the weights
        ``weights_id`` with ``window`` settings if there is none yet (no model needed: an index of
        ``milnce extract``'s feature files). An existing index must have the same weights and
        windows (``IndexMismatchError``; ``keep_existing``: its own windows are kept, ``window`` is
        only a new index's). ``roots`` are added to the index's recorded collection roots."""
        if not isinstance(window, WindowSettings):
            raise UsageError(f"window must be a WindowSettings, got {type(window).__name__}")
        d = user_path(directory)
        if os.path.exists(d) and not os.path.isdir(d):
            raise NotAFolderError(f"index path {directory} exists and is not a folder")
        try:
            os.makedirs(d, exist_ok=True)
        except OSError as exc:
            raise IndexWriteError(f"cannot create the index folder {directory}: {exc.strerror or exc}") from exc
        try:
            return cls._create(d, directory, weights_id, weights_name, window, not keep_existing, roots)
        except sqlite3.Error as exc:
            raise IndexWriteError(f"cannot write the index in {directory}: {sqlite_reason(exc)}") from exc
        except OSError as exc:
            if isinstance(exc, IndexFolderError):
                raise
            raise IndexWriteError(f"cannot write the index in {directory}: {exc.strerror or exc}") from exc

    @classmethod
    def _create(cls, d: str, directory: str | os.PathLike[str], weights_id: str, weights_name: str | None,
                window: WindowSettings, check: bool, roots: Sequence[str | os.PathLike[str]]) -> Index:
        lock_fd = acquire_lock(d)
        try:
            con = rf.init_folder(d, directory, {"weights_id": weights_id, "weights_name": weights_name,
                                             "settings": window.to_dict()})
            idx = cls(d, con, None, lock_fd=lock_fd)
        except BaseException:
            os.close(lock_fd)
            raise
        try:
            idx.check_weights(weights_id)
            if check:
                have = WindowSettings.from_dict(idx.settings)
                if have != window:
                    check_settings(idx.directory, asdict(have), asdict(window))
            idx._truncate_tail()
            if roots:
                idx.add_roots(roots)
        except BaseException:
            idx.close()
            raise
        return idx

    def add_roots(self, roots: Sequence[str | os.PathLike[str]]) -> None:
        """Record more collection roots (folders, or single files, whose videos may be served)."""
        self._need_writer()
        have = self.roots
        new = [r for r in (user_path(x) for x in roots) if r not in have]
        if new or "roots" not in self.state.meta:
            self._commit([], roots=have + new)

    def write_transcript(self, path: str, tracks: Sequence[Any], stamp: Any) -> None:
        """Replace one video's subtitle cues (new or changed subtitle files; the video is not re-embedded)."""
        self._need_writer()
        if self.state.has_cues:
            self._commit(cue_statements(norm_path(path), tracks, stamp))

    def close(self) -> None:
        """Close the database and the snapshot, and release the writer lock."""
        try:
            super().close()
        finally:
            if self._lock_fd is not None:
                try:
                    os.close(self._lock_fd)
                finally:
                    self._lock_fd = None

    # -- writing ------------------------------------------------------------------------------

    def _need_writer(self) -> None:
        if self._lock_fd is None:
            raise IndexFolderError("the index is open read-only")

    def _truncate_tail(self) -> None:
        """Cut what a crashed writer appended after the last commit; drop stale generations."""
        self._need_writer()
        ann = self.meta.get("ann")
        rf.truncate_tail(self.directory, self.generation, self.num_rows, self.dim, ann.get("file") if ann else None)

    def _write_rows(self, kind: str, data: bytes, offset: int, gen: int | None = None) -> None:
        rf.write_rows(store_path(self.directory, kind, self.generation if gen is None else gen), data, offset)

    def _commit(self, statements: list[tuple[str, tuple[Any, ...]]], num_rows: int | None = None, **meta: Any) -> list[int | None]:
        con = self.state.con
        with self.state.lock:
            con.execute("BEGIN IMMEDIATE")
            try:
                ids = [con.execute(sql, params).lastrowid for sql, params in statements]
                if num_rows is not None:
                    meta["num_rows"] = num_rows
                meta["version"] = int(self.state.meta.get("version", 0)) + 1
                for k_, v in meta.items():
                    con.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (k_, json.dumps(v)))
                con.execute("COMMIT")
            except BaseException:
                if con.in_transaction:
                    con.execute("ROLLBACK")
                raise
        self.state.meta = {**self.state.meta, **meta}
        self.state.changed()
        return ids

    def add_video(self, path: str, emb: VideoWindowsLike, *, size: int, mtime: float, content_hash: str) -> int:
        """Store one video's windows (a ``VideoWindows``): rows first (fsync), then the record.
        Replaces a record of the same path. Returns the video id."""
        return self.add_videos([(path, emb, size, mtime, content_hash)])[0]

    def add_videos(self, items: Sequence[tuple[str, VideoWindowsLike, int, float, str]],
                   transcripts: Mapping[str, tuple[Sequence[Any], Any]] | None = None) -> list[int]:
        """Store several videos ``(path, embeddings, size, mtime, content_hash)`` with one append
        and one transaction (all or nothing; with their ``transcripts``: path -> (tracks, stamp))."""
        self._need_writer()
        vecs, times, recs = [], [], []
        n0 = pos = self.num_rows
        for path, emb, size, mtime, content_hash in items:
            vec = np.ascontiguousarray(emb.embeddings, dtype=np.float32)
            if vec.ndim != 2 or vec.shape[1] != self.dim or len(vec) == 0:
                raise ValueError(f"{path}: expected N x {self.dim} embeddings with N >= 1, got {vec.shape}")
            tim = np.stack([np.asarray(emb.starts, np.float64), np.asarray(emb.ends, np.float64)], 1)
            if len(tim) != len(vec):
                raise ValueError(f"{path}: {len(vec)} embeddings but {len(tim)} window times")
            if not (np.isfinite(vec).all() and np.isfinite(tim).all()):
                raise UsageError(f"{show_path(path)}: NaN or infinite window times or embeddings; not indexed")
            dur = float(emb.duration)
            duration = dur if math.isfinite(dur) else float(tim[-1, 1])
            recs.append((norm_path(path), int(size), float(mtime), str(content_hash), duration, pos, len(vec)))
            vecs.append(vec)
            times.append(tim)
            pos += len(vec)
        if not recs:
            return []
        if len({r[0] for r in recs}) != len(recs):
            raise ValueError("add_videos: the same path appears twice")
        try:
            allvec = np.concatenate(vecs)
            codes, aux = quantize_rows(allvec)
            self._write_rows("vectors", allvec.tobytes(), n0 * self.dim * 4)
            self._write_rows("times", np.ascontiguousarray(np.concatenate(times)).tobytes(), n0 * 16)
            self._write_rows("codes", codes.tobytes(), n0 * self.dim)
            self._write_rows("aux", aux.tobytes(), n0 * 12)
        except OSError as exc:
            self._truncate_quietly(n0)
            reason = "the disk is full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else str(exc)
            raise IndexWriteError(f"could not write to {self.directory} ({reason}); the index is intact as of the "
                                  "last committed video: free some space and run the same command again") from exc
        stamp = now()
        stmts: list[tuple[str, tuple[Any, ...]]] = []
        for path, size, mtime, h, duration, start, n in recs:
            old = self.state.paths.get(path)
            if old is not None:
                stmts.append(("UPDATE videos SET size=?, mtime=?, hash=?, duration=?, row_start=?, num_windows=?, "
                              "indexed_at=? WHERE id=?", (size, mtime, h, duration, start, n, stamp, old)))
            else:
                stmts.append(("INSERT INTO videos(path, size, mtime, hash, duration, row_start, num_windows, "
                              "indexed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (db_path(path), size, mtime, h, duration, start, n, stamp)))
            stmts.append(("DELETE FROM errors WHERE path=?", (db_path(path),)))
        for p, (tracks, tstamp) in (transcripts or {}).items() if self.state.has_cues else ():  # after the ids' statements
            stmts.extend(cue_statements(norm_path(p), tracks, tstamp))
        try:
            ids = self._commit(stmts, num_rows=pos)
        except sqlite3.Error as exc:
            self._truncate_quietly(n0)
            raise IndexWriteError(f"could not record the videos in {self.directory} ({exc}); the index is intact as "
                                  "of the last committed video: fix the cause and run the same command again") from exc
        out: list[int] = []
        for (path, size, mtime, h, duration, start, n), rid in zip(recs, ids[0::2]):
            vid = self.state.paths.get(path, rid)
            assert vid is not None  # an INSERT's rowid
            if vid in self.state.rows:
                self.state.live -= int(self.state.rows[vid].num_windows)
            self.state.live += n
            self.state.rows[vid] = VideoRow(vid, path, size, mtime, h, duration, start, n)
            self.state.paths[path] = vid
            out.append(int(vid))
        self.state.changed()
        return out

    def _truncate_quietly(self, rows: int) -> None:
        rf.truncate_rows(self.directory, self.generation, rows, self.dim)

    def update_video(self, video_id: int, *, path: str | None = None, size: int | None = None,
                     mtime: float | None = None) -> None:
        """Change a record's path (a moved file) or its size/mtime (a touched file)."""
        self._need_writer()
        r = self.state.rows[int(video_id)]
        new = r._replace(path=norm_path(path) if path else r.path, size=r.size if size is None else size,
                         mtime=r.mtime if mtime is None else mtime)
        self._commit([("UPDATE videos SET path=?, size=?, mtime=? WHERE id=?", (db_path(new.path), new.size, new.mtime,
                                                                                 int(video_id)))])
        del self.state.paths[r.path]
        self.state.rows[int(video_id)] = new
        self.state.paths[new.path] = int(video_id)
        self.state.changed()

    def remove_videos(self, video_ids: Iterable[int]) -> None:
        """Remove videos by id (their rows become dead: ``compact`` reclaims them)."""
        self._need_writer()
        ids = [int(v) for v in video_ids]
        if ids:
            self._commit([("DELETE FROM videos WHERE id=?", (v,)) for v in ids])
            for v in ids:
                r = self.state.rows.pop(v, None)
                if r is not None:
                    self.state.paths.pop(r.path, None)
                    self.state.live -= int(r.num_windows)
            self.state.changed()

    def remove_paths(self, paths: Iterable[str | os.PathLike[str]]) -> list[str]:
        """Remove from the index the videos at ``paths`` (files, or folders: every indexed video
        under them; the files need not exist any more). Returns the removed videos' paths; a path
        that matches no indexed video raises ``KeyError`` naming it, before anything is removed."""
        self._need_writer()
        ids: dict[int, None] = {}
        for p in paths:
            ap = user_path(p)
            vid = self.state.paths.get(ap)
            if vid is not None:
                ids[vid] = None
                continue
            under = [v for path, v in self.state.paths.items() if path.startswith(ap.rstrip(os.sep) + os.sep)]
            if not under:
                raise KeyError(f"{os.fspath(p)} is not in the index")
            ids.update(dict.fromkeys(under))
        removed = [self.state.rows[v].path for v in ids]
        self.remove_videos(list(ids))
        return removed

    def record_error(self, path: str, reason: str, size: int | None, mtime: float | None) -> None:
        self._need_writer()
        path = norm_path(path)
        self._commit([("INSERT OR REPLACE INTO errors(path, size, mtime, reason, time) VALUES (?, ?, ?, ?, ?)",
                       (db_path(path), size, mtime, reason, now()))])
        self.log_error(path, reason)

    def log_error(self, path: str, reason: str) -> None:
        """Append ``path`` and ``reason`` to ``errors.log`` (names that are not UTF-8 as ``\\xNN``)."""
        rf.append_error_log(self.directory, path, reason)

    def error_entry(self, path: str) -> tuple[int | None, float | None] | None:
        with self.state.lock:
            row = self.state.con.execute("SELECT size, mtime FROM errors WHERE path=?", (db_path(norm_path(path)),)).fetchone()
        return None if row is None else (row[0], row[1])

    def compact(self) -> bool:
        """Rewrite the live rows into a new generation (drops dead rows and the ANN index)."""
        self._need_writer()
        if self.num_live == self.num_rows:
            return False
        gen = self.generation + 1
        try:
            starts = rf.write_generation(self.directory, gen, self.snapshot)
            self._commit([("UPDATE videos SET row_start=? WHERE id=?", (pos, vid)) for vid, pos in starts],
                         num_rows=sum(int(r.num_windows) for r in self.state.rows.values()), generation=gen, ann=None)
        except OSError as exc:
            rf.remove_generation(self.directory, gen)
            raise IndexWriteError(f"could not compact {self.directory} ({exc}); the index is unchanged") from exc
        self.state.load()
        rf.remove_generation(self.directory, gen - 1, ann=True)
        return True

    def build_ann(self, *, queries: np.ndarray | None = None, nlist: int | None = None, m: int = 0,
                  target_recall: float | None = None, progress: bool = False, kind: str = "ivf") -> dict[str, Any]:
        """Build the approximate index (``kind``: ivf or pq); see ``milnce.index.ann.build_ann``."""
        self._need_writer()
        info = build_ann(self.snapshot, queries=queries, nlist=nlist, m=m, target_recall=target_recall,
                         progress=progress, kind=kind)
        old = self.state.meta.get("ann")
        self._commit([], ann=info)
        self.state.load()
        if old and old.get("file") != info["file"] and is_ann_name(old.get("file")):  # never a path elsewhere
            try:  # a file, or an IVF-PQ folder
                (shutil.rmtree if old.get("format") == "pq" else os.remove)(os.path.join(self.directory, old["file"]))
            except OSError:
                pass
        return info

