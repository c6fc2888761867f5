"""The index store: ``Index``, the one writer of an index folder (see ``milnce.index``): opening
(checks in ``milnce.index.verify``), records, writes, commits and compaction. Each commit
publishes a new immutable ``milnce.index.snapshot.Snapshot`` that searches read
(``milnce.index.query``); SQLite is in ``milnce.index.database``, the store files in
``milnce.index.storefiles``.

Crash safety: a video's rows are appended and fsync'ed *before* the SQLite transaction that
records them (and the committed row count) commits. A crash or a full disk leaves at worst an
unreferenced tail, which the next writer truncates; readers only ever map the committed rows.
Rows of re-indexed or pruned videos become dead and are skipped; when they exceed a quarter of
the store, the live rows are rewritten into a new generation ``G`` (also committed last).

Search (``milnce.index.query``) memory-maps the store (``np.memmap``): the page cache holds the
vectors once. Exact search scans the int8 codes (a quarter of the bytes) and re-scores from the
float32 rows every window whose score could reach the top k under a proven bound on the
quantisation error, so it returns what a full float32 scan returns (``exact="scan"`` does that
scan). The ANN index (faiss IVF with 8-bit codes, ``--ann``) gives candidates that are re-scored
the same way, so scores are always exact dot products.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import sqlite3
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import NotAFolderError, UsageError
from ..protocols import Encoder
from ..windows import WindowSettings
from . import storefiles as sf
from .ann import build_ann, is_ann_name
from .database import SCHEMA, connect, db_path, from_db, read_meta, sqlite_reason
from .errors import IndexFolderError, IndexMismatchError, IndexNotFoundError, IndexWriteError
from .layout import DB_NAME, DIM, norm_path, now, show_path, user_path
from .lock import acquire_lock
from .query import PERCENTILE_SAMPLE, QueryMixin
from .records import VideoEmbeddingsLike, VideoRecord, VideoRow
from .search import quantize_rows
from .snapshot import Snapshot, store_path
from .verify import check_settings, check_snapshot

__all__ = ["Index", "PERCENTILE_SAMPLE"]


class Index(QueryMixin):
    """An opened index folder (a consistent snapshot; ``refresh()`` picks up later commits).

    ``Index.open(folder, model)`` for searching with text; ``search_embeddings`` works without a
    model. Thread-safe for searches.
    """

    def __init__(self, directory: str, con: sqlite3.Connection, model: Encoder | None = None, *, readonly: bool = True,
                 lock_fd: int | None = None) -> None:
        self.directory = directory
        self._con = con
        self.model = model
        self.readonly = readonly
        self._lock_fd = lock_fd
        self._db_lock = threading.RLock()
        self._publish_lock = threading.Lock()
        self._snap: Snapshot | None = None
        self._load()

    # -- opening ------------------------------------------------------------------------------

    @classmethod
    def open(cls, directory: str | os.PathLike[str], model: Encoder | None = None, *, readonly: bool = True) -> Index:
        """Open an existing index. ``model``: a ``MILNCE`` whose weights built the index (for
        text queries); ``readonly=False`` takes the writer lock (one writer at a time)."""
        d = user_path(directory)
        db = os.path.join(d, DB_NAME)
        if not os.path.isdir(d):
            raise IndexNotFoundError(f"no index at {directory}: the folder does not exist "
                                     "(build one with: milnce index VIDEOS... --index DIR)")
        if not os.path.isfile(db):
            raise IndexNotFoundError(f"no index at {directory}: {DB_NAME} is missing "
                                     "(build one with: milnce index VIDEOS... --index DIR)")
        lock_fd = None if readonly else acquire_lock(d)
        try:
            con = connect(db, readonly)
            if not readonly:
                con.executescript(SCHEMA)
            idx = cls(d, con, model, readonly=readonly, lock_fd=lock_fd)
        except sqlite3.DatabaseError as exc:
            if lock_fd is not None:
                os.close(lock_fd)
            raise IndexFolderError(f"{db}: not a readable index database ({exc})") from exc
        except BaseException:
            if lock_fd is not None:
                os.close(lock_fd)
            raise
        try:
            if model is not None:
                idx.check_model(model)
            if not readonly:
                idx._truncate_tail()
        except BaseException:
            idx.close()
            raise
        return idx

    @classmethod
    def create(cls, directory: str | os.PathLike[str], model: Encoder, settings: dict[str, Any] | None = None, *,
               roots: Sequence[str | os.PathLike[str]] = ()) -> Index:
        """Open ``directory`` for writing, creating the index if there is none yet (window settings:
        ``settings`` over the model's conventions, checked before anything is created; ``roots``:
        collection roots to record, see ``milnce.index.roots``)."""
        given = {k: v for k, v in (settings or {}).items() if v is not None}
        window = WindowSettings.for_model(model, **given)
        idx = cls.create_for(directory, model.weights_id, window, weights_name=getattr(getattr(model, "info", None), "name", None),
                             check=settings, roots=roots)
        source = getattr(model, "weights_source", None)  # where to load the weights again (milnce.index.source)
        if source and idx.meta.get("weights_source") != source:
            idx._commit([], weights_source=source)
        idx.model = model
        return idx

    @classmethod
    def create_for(cls, directory: str | os.PathLike[str], weights_id: str, window: WindowSettings, *,
                   weights_name: str | None = None, check: dict[str, Any] | None = None,
                   roots: Sequence[str | os.PathLike[str]] = ()) -> Index:
        """Open ``directory`` for writing, creating an index of embeddings made by the weights
        ``weights_id`` with ``window`` settings if there is none yet (no model needed: an index of
        ``milnce extract``'s feature files). An existing index must have the same weights
        (``IndexMismatchError``) and the settings in ``check``. ``roots`` are added to the index's
        recorded collection roots."""
        d = user_path(directory)
        if os.path.exists(d) and not os.path.isdir(d):
            raise NotAFolderError(f"index path {directory} exists and is not a folder")
        try:
            os.makedirs(d, exist_ok=True)
        except OSError as exc:
            raise IndexWriteError(f"cannot create the index folder {directory}: {exc.strerror or exc}") from exc
        try:
            return cls._create(d, directory, weights_id, weights_name, window, check, roots)
        except sqlite3.Error as exc:
            raise IndexWriteError(f"cannot write the index in {directory}: {sqlite_reason(exc)}") from exc
        except OSError as exc:
            if isinstance(exc, IndexFolderError):
                raise
            raise IndexWriteError(f"cannot write the index in {directory}: {exc.strerror or exc}") from exc

    @classmethod
    def _create(cls, d: str, directory: str | os.PathLike[str], weights_id: str, weights_name: str | None,
                window: WindowSettings, settings: dict[str, Any] | None,
                roots: Sequence[str | os.PathLike[str]]) -> Index:
        lock_fd = acquire_lock(d)
        try:
            con = sf.init_folder(d, directory, {"weights_id": weights_id, "weights_name": weights_name,
                                             "settings": window.to_dict()})
            idx = cls(d, con, None, readonly=False, lock_fd=lock_fd)
        except BaseException:
            os.close(lock_fd)
            raise
        try:
            idx.check_weights(weights_id)
            if settings:
                idx.check_settings(settings)
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
        if new or "roots" not in self._meta:
            self._commit([], roots=have + new)

    def check_model(self, model: Encoder) -> None:
        """Refuse a model whose weights differ from those that built the index."""
        self.check_weights(getattr(model, "weights_id", None))

    def check_weights(self, wid: str | None) -> None:
        """Refuse embeddings of weights other than those that built the index."""
        if wid != self.weights_id:
            raise IndexMismatchError(
                f"the index at {self.directory} was built with other weights (id {self.weights_id}"
                f"{', ' + self.meta['weights_name'] if self.meta.get('weights_name') else ''}) than the ones "
                f"loaded (id {wid}); its scores would be meaningless. Load the same --weights, or "
                "build a new index for these weights in another folder"
            )

    def check_settings(self, settings: dict[str, Any]) -> None:
        """Refuse window settings that differ from the index's."""
        check_settings(self.directory, self.settings, settings)

    # -- state: the writer's records, published as snapshots ----------------------------------

    def _load(self) -> None:
        """Read the committed state from SQLite and publish it."""
        with self._db_lock:
            con = self._con
            con.execute("BEGIN")  # one snapshot for the settings, the row count and the videos
            try:
                meta = read_meta(con, self.directory)
                rows = con.execute(
                    "SELECT id, path, size, mtime, hash, duration, row_start, num_windows FROM videos ORDER BY row_start"
                ).fetchall()
            finally:
                con.execute("COMMIT")
        check_snapshot(self.directory, meta, rows)
        self._meta: dict[str, Any] = meta
        records = [VideoRow(r[0], from_db(r[1]), *r[2:]) for r in rows]
        self._rows: dict[int, VideoRow] = {r.id: r for r in records}
        self._paths: dict[str, int] = {r.path: r.id for r in records}
        self._live = sum(int(r.num_windows) for r in records)
        self._publish()

    def _publish(self) -> None:
        """Make the writer's current state the snapshot that reads see."""
        with self._publish_lock:
            old = self._snap
            self._snap = Snapshot(self.directory, self._meta, self._rows, previous=old)
            self._dirty = False

    def _changed(self) -> None:
        self._dirty = True  # published lazily, on the next read: a build commits far more often than it reads

    @property
    def snapshot(self) -> Snapshot:
        """The current committed state (immutable; a later commit publishes a new one)."""
        if self._dirty:
            self._publish()
        assert self._snap is not None
        return self._snap

    @property
    def meta(self) -> dict[str, Any]:
        return self._meta

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self._meta["settings"])

    @property
    def weights_id(self) -> str:
        return str(self._meta["weights_id"])

    @property
    def dim(self) -> int:
        return int(self._meta.get("dim", DIM))

    @property
    def num_rows(self) -> int:
        return int(self._meta["num_rows"])

    @property
    def generation(self) -> int:
        return int(self._meta["generation"])

    @property
    def num_live(self) -> int:
        return self._live

    @property
    def roots(self) -> list[str]:
        """The collection roots recorded for the index (``milnce.index.roots``)."""
        return list(self._meta.get("roots") or [])

    def video_id_of(self, path: str | os.PathLike[str]) -> int | None:
        """The id of the video recorded at ``path`` (absolute), or None (the writer's current state)."""
        return self._paths.get(norm_path(path))

    def row(self, video_id: int) -> VideoRow:
        """The stored row of a video (``KeyError`` if unknown; the writer's current state)."""
        return self._rows[int(video_id)]

    def has_row(self, video_id: int) -> bool:
        """Whether a video id is recorded (the writer's current state)."""
        return int(video_id) in self._rows

    def rows(self) -> list[VideoRow]:
        """Every stored video row (the writer's current state)."""
        return list(self._rows.values())

    # Private views kept for the index's own tests.
    @property
    def _records(self) -> Mapping[int, VideoRow]:
        return self.snapshot.records

    @property
    def _vectors(self) -> np.ndarray:
        return self.snapshot.vectors

    def _path(self, kind: str, gen: int | None = None) -> str:
        return store_path(self.directory, kind, self.generation if gen is None else gen)

    def refresh(self) -> bool:
        """Reload if another process committed changes; returns whether it did."""
        with self._db_lock:
            row = self._con.execute("SELECT value FROM meta WHERE key='version'").fetchone()
        if row is not None and json.loads(row[0]) != self._meta.get("version", 0):
            self._load()  # running searches keep the snapshot they started with
            return True
        return False

    def __len__(self) -> int:
        """Number of (live) windows."""
        return self.num_live

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        try:
            self._con.close()
        except Exception:  # noqa: BLE001
            pass
        if self._lock_fd is not None:
            try:
                os.close(self._lock_fd)
            finally:
                self._lock_fd = None
        if self._snap is not None:
            self._snap.close()

    def __repr__(self) -> str:
        return (f"Index({self.directory!r}, {len(self._rows)} videos, {self.num_live} windows, "
                f"weights {self.weights_id}, ann={'yes' if self.meta.get('ann') else 'no'})")

    # -- videos -------------------------------------------------------------------------------

    @property
    def num_videos(self) -> int:
        """Number of indexed videos."""
        return len(self.snapshot.records)

    def _record(self, r: VideoRow, check: bool = True) -> VideoRecord:
        return VideoRecord(id=r.id, path=r.path, duration=float(r.duration), num_windows=int(r.num_windows),
                           size=int(r.size), mtime=float(r.mtime), exists=os.path.isfile(r.path) if check else True)

    def videos(self) -> list[VideoRecord]:
        """All indexed videos, by path."""
        return sorted((self._record(r) for r in self.snapshot.records.values()), key=lambda v: v.path)

    def video(self, video_id: int) -> VideoRecord:
        """One video by id (``KeyError`` if unknown)."""
        try:
            return self._record(self.snapshot.records[int(video_id)])
        except (KeyError, ValueError, TypeError):
            raise KeyError(f"no video with id {video_id!r} in the index") from None

    def video_by_path(self, path: str | os.PathLike[str]) -> VideoRecord | None:
        snap = self.snapshot
        vid = snap.by_path.get(user_path(path))
        return None if vid is None else self._record(snap.records[vid])

    def windows(self, video_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(starts, ends, embeddings)`` of one video's windows (copies)."""
        return self.snapshot.windows(video_id)

    def errors(self) -> list[tuple[str, str]]:
        """``(path, reason)`` of the videos that could not be read."""
        with self._db_lock:
            return sorted((from_db(p), r) for p, r in self._con.execute("SELECT path, reason FROM errors"))

    def live_mask(self) -> np.ndarray | None:
        """Boolean mask of live rows, or None when every row is live."""
        return self.snapshot.live_mask()

    # -- ANN ----------------------------------------------------------------------------------

    def ann(self) -> Any:
        """The loaded approximate index (faiss) or None (none built, stale, damaged, or no faiss)."""
        return self.snapshot.ann()

    def ann_status(self) -> dict[str, Any]:
        """The approximate index's state for health checks: ``{"state": "ok" | "not built" |
        "missing" | "damaged" | "stale" | "no faiss", "file", "kind", "rows", "nprobe",
        "recall_at_10", "reason"}``. Anything but "ok" means searches are exact."""
        return self.snapshot.ann_status()

    # -- writing ------------------------------------------------------------------------------

    def _need_writer(self) -> None:
        if self.readonly or self._lock_fd is None:
            raise IndexFolderError("the index is open read-only")

    def _truncate_tail(self) -> None:
        """Cut what a crashed writer appended after the last commit; drop stale generations."""
        self._need_writer()
        ann = self.meta.get("ann")
        sf.truncate_tail(self.directory, self.generation, self.num_rows, self.dim, ann.get("file") if ann else None)

    def _write_rows(self, kind: str, data: bytes, offset: int, gen: int | None = None) -> None:
        sf.write_rows(self._path(kind, gen), data, offset)

    def _commit(self, statements: list[tuple[str, tuple[Any, ...]]], num_rows: int | None = None, **meta: Any) -> list[int | None]:
        con = self._con
        with self._db_lock:
            con.execute("BEGIN IMMEDIATE")
            try:
                ids = [con.execute(sql, params).lastrowid for sql, params in statements]
                if num_rows is not None:
                    meta["num_rows"] = num_rows
                meta["version"] = int(self._meta.get("version", 0)) + 1
                for k_, v in meta.items():
                    con.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (k_, json.dumps(v)))
                con.execute("COMMIT")
            except BaseException:
                if con.in_transaction:
                    con.execute("ROLLBACK")
                raise
        self._meta = {**self._meta, **meta}
        self._changed()
        return ids

    def add_video(self, path: str, emb: VideoEmbeddingsLike, *, size: int, mtime: float, content_hash: str) -> int:
        """Store one video's windows (``VideoEmbeddings``): rows first (fsync), then the record.
        Replaces a record of the same path. Returns the video id."""
        return self.add_videos([(path, emb, size, mtime, content_hash)])[0]

    def add_videos(self, items: Sequence[tuple[str, VideoEmbeddingsLike, int, float, str]]) -> list[int]:
        """Store several videos ``(path, embeddings, size, mtime, content_hash)`` with one append
        and one transaction (all or nothing). Returns their ids."""
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
            old = self._paths.get(path)
            if old is not None:
                stmts.append(("UPDATE videos SET size=?, mtime=?, hash=?, duration=?, row_start=?, num_windows=?, "
                              "indexed_at=? WHERE id=?", (size, mtime, h, duration, start, n, stamp, old)))
            else:
                stmts.append(("INSERT INTO videos(path, size, mtime, hash, duration, row_start, num_windows, "
                              "indexed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (db_path(path), size, mtime, h, duration, start, n, stamp)))
            stmts.append(("DELETE FROM errors WHERE path=?", (db_path(path),)))
        try:
            ids = self._commit(stmts, num_rows=pos)
        except sqlite3.Error as exc:
            self._truncate_quietly(n0)
            raise IndexWriteError(f"could not record the videos in {self.directory} ({exc}); the index is intact as "
                                  "of the last committed video: fix the cause and run the same command again") from exc
        out: list[int] = []
        for (path, size, mtime, h, duration, start, n), rid in zip(recs, ids[0::2]):
            vid = self._paths.get(path, rid)
            assert vid is not None  # an INSERT's rowid
            if vid in self._rows:
                self._live -= int(self._rows[vid].num_windows)
            self._live += n
            self._rows[vid] = VideoRow(vid, path, size, mtime, h, duration, start, n)
            self._paths[path] = vid
            out.append(int(vid))
        self._changed()
        return out

    def _truncate_quietly(self, rows: int) -> None:
        sf.truncate_rows(self.directory, self.generation, rows, self.dim)

    def update_video(self, video_id: int, *, path: str | None = None, size: int | None = None,
                     mtime: float | None = None) -> None:
        """Change a record's path (a moved file) or its size/mtime (a touched file)."""
        self._need_writer()
        r = self._rows[int(video_id)]
        new = r._replace(path=norm_path(path) if path else r.path, size=r.size if size is None else size,
                         mtime=r.mtime if mtime is None else mtime)
        self._commit([("UPDATE videos SET path=?, size=?, mtime=? WHERE id=?", (db_path(new.path), new.size, new.mtime,
                                                                                 int(video_id)))])
        del self._paths[r.path]
        self._rows[int(video_id)] = new
        self._paths[new.path] = int(video_id)
        self._changed()

    def remove_videos(self, video_ids: Iterable[int]) -> None:
        """Remove videos by id (their rows become dead: ``compact`` reclaims them)."""
        self._need_writer()
        ids = [int(v) for v in video_ids]
        if ids:
            self._commit([("DELETE FROM videos WHERE id=?", (v,)) for v in ids])
            for v in ids:
                r = self._rows.pop(v, None)
                if r is not None:
                    self._paths.pop(r.path, None)
                    self._live -= int(r.num_windows)
            self._changed()

    def remove_paths(self, paths: Iterable[str | os.PathLike[str]]) -> list[str]:
        """Remove from the index the videos at ``paths`` (files, or folders: every indexed video
        under them; the files need not exist any more). Returns the removed videos' paths; a path
        that matches no indexed video raises ``KeyError`` naming it, before anything is removed."""
        self._need_writer()
        ids: dict[int, None] = {}
        for p in paths:
            ap = user_path(p)
            vid = self._paths.get(ap)
            if vid is not None:
                ids[vid] = None
                continue
            under = [v for path, v in self._paths.items() if path.startswith(ap.rstrip(os.sep) + os.sep)]
            if not under:
                raise KeyError(f"{os.fspath(p)} is not in the index")
            ids.update(dict.fromkeys(under))
        removed = [self._rows[v].path for v in ids]
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
        sf.append_error_log(self.directory, path, reason)

    def error_entry(self, path: str) -> tuple[int | None, float | None] | None:
        with self._db_lock:
            row = self._con.execute("SELECT size, mtime FROM errors WHERE path=?", (db_path(norm_path(path)),)).fetchone()
        return None if row is None else (row[0], row[1])

    def compact(self) -> bool:
        """Rewrite the live rows into a new generation (drops dead rows and the ANN index)."""
        self._need_writer()
        if self.num_live == self.num_rows:
            return False
        gen = self.generation + 1
        try:
            starts = sf.write_generation(self.directory, gen, self.snapshot)
            self._commit([("UPDATE videos SET row_start=? WHERE id=?", (pos, vid)) for vid, pos in starts],
                         num_rows=sum(int(r.num_windows) for r in self._rows.values()), generation=gen, ann=None)
        except OSError as exc:
            sf.remove_generation(self.directory, gen)
            raise IndexWriteError(f"could not compact {self.directory} ({exc}); the index is unchanged") from exc
        self._load()
        sf.remove_generation(self.directory, gen - 1, ann=True)
        return True

    def build_ann(self, *, queries: np.ndarray | None = None, nlist: int | None = None, m: int = 0,
                  target_recall: float | None = None, progress: bool = False, kind: str = "ivf") -> dict[str, Any]:
        """Build the approximate index (``kind``: ivf or pq); see ``milnce.index.ann.build_ann``."""
        self._need_writer()
        info = build_ann(self.snapshot, queries=queries, nlist=nlist, m=m, target_recall=target_recall,
                         progress=progress, kind=kind)
        old = self._meta.get("ann")
        self._commit([], ann=info)
        self._load()
        if old and old.get("file") != info["file"] and is_ann_name(old.get("file")):  # never a path elsewhere
            try:  # a file, or an IVF-PQ folder
                (shutil.rmtree if old.get("format") == "pq" else os.remove)(os.path.join(self.directory, old["file"]))
            except OSError:
                pass
        return info

