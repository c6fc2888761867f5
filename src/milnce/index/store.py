"""The index store: ``Index`` reads and writes an index folder (see ``milnce.index`` for the layout):
opening (with the checks of ``milnce.index.verify``), records, the memory-mapped rows, writes,
commits and compaction. SQLite details live in ``milnce.index.database``; searching in
``milnce.index.query`` (``QueryMixin``, a base of ``Index``).

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
import mmap
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import numpy as np

from ..errors import NotAFolderError
from ..protocols import Encoder
from ..windows import WindowSettings
from .ann import ann_status, build_ann, load_ann
from .database import SCHEMA, connect, db_path, from_db, read_meta, sqlite_reason
from .errors import IndexFolderError, IndexMismatchError, IndexNotFoundError, IndexWriteError
from .layout import (
    DB_NAME,
    DIM,
    ERROR_LOG,
    EXT,
    FORMAT_VERSION,
    KINDS,
    PREFIXES,
    fsync_dir,
    norm_path,
    now,
    user_path,
)
from .lock import acquire_lock
from .query import PERCENTILE_SAMPLE, QueryMixin
from .records import VideoRecord, VideoRow
from .search import quantize_rows
from .verify import check_snapshot

__all__ = ["Index", "PERCENTILE_SAMPLE"]


class VideoEmbeddingsLike(Protocol):
    """What ``Index.add_video`` stores (``milnce.video.VideoEmbeddings``)."""

    starts: np.ndarray
    ends: np.ndarray
    embeddings: np.ndarray
    duration: float


class _RWLock:
    """Many readers (searches) or one writer (reloading the snapshot)."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0

    def read(self) -> _RWLock._Ctx:
        return _RWLock._Ctx(self, False)

    def write(self) -> _RWLock._Ctx:
        return _RWLock._Ctx(self, True)

    class _Ctx:
        def __init__(self, lock: _RWLock, exclusive: bool) -> None:
            self.lock, self.exclusive = lock, exclusive

        def __enter__(self) -> None:
            c = self.lock._cond
            c.acquire()
            if self.exclusive:
                while self.lock._readers:
                    c.wait()  # keeps the condition's lock: new readers wait until we are done
            else:
                self.lock._readers += 1
                c.release()

        def __exit__(self, *exc: Any) -> None:
            c = self.lock._cond
            if self.exclusive:
                c.release()
            else:
                with c:
                    self.lock._readers -= 1
                    if not self.lock._readers:
                        c.notify_all()


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
        self._state_lock = _RWLock()
        self._ann: Any = None
        self._ann_key: Any = None
        self._ann_state: dict[str, Any] = {"state": "not built"}
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
    def create(cls, directory: str | os.PathLike[str], model: Encoder, settings: dict[str, Any] | None = None) -> Index:
        """Open ``directory`` for writing, creating the index if there is none yet (window settings:
        ``settings`` over the model's conventions, checked before anything is created)."""
        given = {k: v for k, v in (settings or {}).items() if v is not None}
        window = WindowSettings.for_model(model, **given)
        d = user_path(directory)
        if os.path.exists(d) and not os.path.isdir(d):
            raise NotAFolderError(f"index path {directory} exists and is not a folder")
        try:
            os.makedirs(d, exist_ok=True)
        except OSError as exc:
            raise IndexWriteError(f"cannot create the index folder {directory}: {exc.strerror or exc}") from exc
        try:
            return cls._create(d, directory, model, window, settings)
        except sqlite3.Error as exc:
            raise IndexWriteError(f"cannot write the index in {directory}: {sqlite_reason(exc)}") from exc
        except OSError as exc:
            if isinstance(exc, IndexFolderError):
                raise
            raise IndexWriteError(f"cannot write the index in {directory}: {exc.strerror or exc}") from exc

    @classmethod
    def _create(cls, d: str, directory: str | os.PathLike[str], model: Encoder, window: WindowSettings,
                settings: dict[str, Any] | None) -> Index:
        lock_fd = acquire_lock(d)
        try:
            db = os.path.join(d, DB_NAME)
            if not os.path.isfile(db):
                ours = ("vectors-", "times-", "ann-", DB_NAME, ERROR_LOG, ".")
                stray = [n for n in os.listdir(d) if not n.startswith(ours)]
                if stray:
                    raise IndexFolderError(f"{directory} is not empty and holds no index ({stray[0]}, ...); "
                                      "pick an empty or new folder for the index")
            con = connect(db, readonly=False)
            con.executescript(SCHEMA)
            meta = read_meta(con, d)
            if not meta:
                s = window.to_dict()
                info = getattr(model, "info", None)
                init = {
                    "format_version": FORMAT_VERSION,
                    "weights_id": model.weights_id,
                    "weights_name": getattr(info, "name", None),
                    "dim": DIM,
                    "settings": s,
                    "num_rows": 0,
                    "generation": 0,
                    "created": now(),
                    "version": 0,
                }
                con.execute("BEGIN IMMEDIATE")
                con.executemany("INSERT INTO meta(key, value) VALUES (?, ?)", [(k, json.dumps(v)) for k, v in init.items()])
                con.execute("COMMIT")
                fsync_dir(d)
            idx = cls(d, con, model, readonly=False, lock_fd=lock_fd)
        except BaseException:
            os.close(lock_fd)
            raise
        try:
            idx.check_model(model)
            if settings:
                idx.check_settings(settings)
            idx._truncate_tail()
        except BaseException:
            idx.close()
            raise
        return idx

    def check_model(self, model: Encoder) -> None:
        """Refuse a model whose weights differ from those that built the index."""
        wid = getattr(model, "weights_id", None)
        if wid != self.weights_id:
            raise IndexMismatchError(
                f"the index at {self.directory} was built with other weights (id {self.weights_id}"
                f"{', ' + self.meta['weights_name'] if self.meta.get('weights_name') else ''}) than the ones "
                f"loaded (id {wid}); its scores would be meaningless. Load the same --weights, or "
                "build a new index for these weights in another folder"
            )

    def check_settings(self, settings: dict[str, Any]) -> None:
        """Refuse window settings that differ from the index's."""
        bad = []
        for k, v in settings.items():
            if v is None or k not in self.settings:
                continue
            have = self.settings[k]
            same = math.isclose(float(v), float(have)) if isinstance(have, (int, float)) else v == have
            if not same:
                bad.append(f"{k}={v} (index: {have})")
        if bad:
            raise IndexMismatchError(
                f"the index at {self.directory} was built with other window settings: {', '.join(bad)}; "
                "leave these options out to reuse the index's, or use another folder"
            )

    # -- state --------------------------------------------------------------------------------

    def _load(self) -> None:
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
        self.meta = meta
        self.settings: dict[str, Any] = dict(meta["settings"])
        self.weights_id: str = meta["weights_id"]
        self.dim = int(meta.get("dim", DIM))
        self.num_rows = int(meta["num_rows"])
        self.generation = int(meta["generation"])
        self._version = meta.get("version", 0)
        records = [VideoRow(r[0], from_db(r[1]), *r[2:]) for r in rows]
        self._records: dict[int, VideoRow] = {r.id: r for r in records}
        self._by_path: dict[str, int] = {r.path: r.id for r in records}
        self.num_live = sum(int(r.num_windows) for r in records)
        self._changed()

    def _changed(self) -> None:
        """Forget what is derived from the records (rebuilt lazily on the next search)."""
        self._derived: dict[str, Any] = {}
        self._live_mask: np.ndarray | None = None
        self._ann = None
        self._ann_key = None

    def _ranges(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Live row ranges sorted by start: ``(row_start, row_end, video_id)``."""
        d = self._derived
        if "ranges" not in d:
            recs = sorted(self._records.values(), key=lambda r: r.row_start)
            rs = np.array([r.row_start for r in recs], dtype=np.int64)
            rc = np.array([r.num_windows for r in recs], dtype=np.int64)
            d["ranges"] = (rs, rs + rc, np.array([r.id for r in recs], dtype=np.int64))
        return d["ranges"]

    @property
    def _rs(self) -> np.ndarray:
        return self._ranges()[0]

    @property
    def _re(self) -> np.ndarray:
        return self._ranges()[1]

    @property
    def _vid(self) -> np.ndarray:
        return self._ranges()[2]

    @property
    def _vectors(self) -> np.ndarray:
        if "maps" not in self._derived:
            self._derived["maps"] = self._map(self.generation, self.num_rows)
        return self._derived["maps"][0]

    @property
    def _times(self) -> np.ndarray:
        if "maps" not in self._derived:
            self._derived["maps"] = self._map(self.generation, self.num_rows)
        return self._derived["maps"][1]

    def _path(self, kind: str, gen: int | None = None) -> str:
        g = self.generation if gen is None else gen
        return os.path.join(self.directory, f"{kind}-{g}.{EXT[kind]}")

    def _width(self, kind: str) -> int:
        """Bytes per row of a store file."""
        return {"vectors": self.dim * 4, "times": 16, "codes": self.dim, "aux": 12}[kind]

    def _code_stats(self) -> tuple[Any, float, float]:
        """bf16 scales (a tensor) and the largest residual norm and norm, computed once."""
        d = self._derived
        if "code_stats" not in d:
            import torch

            aux = np.asarray(self._codes[1])  # type: ignore[index]
            d["code_stats"] = (torch.from_numpy(np.ascontiguousarray(aux[:, 0])).to(torch.bfloat16),
                               float(aux[:, 1].max()), float(aux[:, 2].max()))
        return d["code_stats"]

    @property
    def _codes(self) -> tuple[np.ndarray, np.ndarray] | None:
        """int8 codes (N x 512) and per-row (scale, residual norm, norm) for the screened scan,
        or None when the files are missing or short (the scan then uses the float32 store)."""
        d = self._derived
        if "codes" not in d:
            d["codes"] = None
            n = self.num_rows
            cp, ap = self._path("codes"), self._path("aux")
            if n and all(os.path.exists(p) and os.path.getsize(p) >= n * self._width(k)
                         for p, k in ((cp, "codes"), (ap, "aux"))):
                d["codes"] = (np.memmap(cp, dtype=np.int8, mode="r", shape=(n, self.dim)),
                              np.memmap(ap, dtype=np.float32, mode="r", shape=(n, 3)))
        return d["codes"]

    def _map(self, gen: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
        vp, tp = self._path("vectors", gen), self._path("times", gen)
        if rows == 0:
            return np.zeros((0, self.dim), np.float32), np.zeros((0, 2), np.float64)
        for p, nbytes in ((vp, rows * self.dim * 4), (tp, rows * 16)):
            have = os.path.getsize(p) if os.path.exists(p) else -1
            if have < nbytes:
                raise IndexFolderError(f"{p}: the vector store is missing or shorter than the committed "
                                  f"{rows} rows ({have} < {nbytes} bytes); the index is damaged")
        v = np.memmap(vp, dtype=np.float32, mode="r", shape=(rows, self.dim))
        t = np.memmap(tp, dtype=np.float64, mode="r", shape=(rows, 2))
        # Searches read scattered rows of the float32 store (re-scoring): no read-ahead around them.
        mm = getattr(v, "_mmap", None)
        if mm is not None and hasattr(mm, "madvise") and hasattr(mmap, "MADV_RANDOM"):
            try:
                mm.madvise(mmap.MADV_RANDOM)
            except OSError:
                pass
        return v, t

    def refresh(self) -> bool:
        """Reload if another process committed changes; returns whether it did."""
        with self._db_lock:
            row = self._con.execute("SELECT value FROM meta WHERE key='version'").fetchone()
        if row is not None and json.loads(row[0]) != self._version:
            with self._state_lock.write():  # waits for running searches
                self._load()
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
        self._derived = {"maps": (np.zeros((0, self.dim), np.float32), np.zeros((0, 2), np.float64))}
        self._ann = None

    def __repr__(self) -> str:
        return (f"Index({self.directory!r}, {len(self._records)} videos, {self.num_live} windows, "
                f"weights {self.weights_id}, ann={'yes' if self.meta.get('ann') else 'no'})")

    # -- videos -------------------------------------------------------------------------------

    @property
    def num_videos(self) -> int:
        """Number of indexed videos."""
        return len(self._records)

    def _record(self, r: VideoRow, check: bool = True) -> VideoRecord:
        return VideoRecord(id=r.id, path=r.path, duration=float(r.duration), num_windows=int(r.num_windows),
                           size=int(r.size), mtime=float(r.mtime), exists=os.path.isfile(r.path) if check else True)

    def videos(self) -> list[VideoRecord]:
        """All indexed videos, by path."""
        return sorted((self._record(r) for r in self._records.values()), key=lambda v: v.path)

    def video(self, video_id: int) -> VideoRecord:
        """One video by id (``KeyError`` if unknown)."""
        try:
            return self._record(self._records[int(video_id)])
        except (KeyError, ValueError, TypeError):
            raise KeyError(f"no video with id {video_id!r} in the index") from None

    def video_by_path(self, path: str | os.PathLike[str]) -> VideoRecord | None:
        vid = self._by_path.get(user_path(path))
        return None if vid is None else self._record(self._records[vid])

    def windows(self, video_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(starts, ends, embeddings)`` of one video's windows (copies)."""
        r = self._records[int(video_id)]
        a, n = int(r.row_start), int(r.num_windows)
        t = np.array(self._times[a:a + n])
        return t[:, 0], t[:, 1], np.array(self._vectors[a:a + n])

    def errors(self) -> list[tuple[str, str]]:
        """``(path, reason)`` of the videos that could not be read."""
        with self._db_lock:
            return sorted((from_db(p), r) for p, r in self._con.execute("SELECT path, reason FROM errors"))

    def live_mask(self) -> np.ndarray | None:
        """Boolean mask of live rows, or None when every row is live."""
        if self.num_live == self.num_rows:
            return None
        if self._live_mask is None:
            mask = np.zeros(self.num_rows, dtype=bool)
            for a, b in zip(self._rs, self._re):
                mask[a:b] = True
            self._live_mask = mask
        return self._live_mask

    # -- ANN ----------------------------------------------------------------------------------

    def ann(self) -> Any:
        """The loaded approximate index (faiss) or None (none built, stale, damaged, or no faiss)."""
        return load_ann(self)

    def ann_status(self) -> dict[str, Any]:
        """The approximate index's state for health checks: ``{"state": "ok" | "not built" |
        "missing" | "damaged" | "stale" | "no faiss", "file", "kind", "rows", "nprobe",
        "recall_at_10", "reason"}``. Anything but "ok" means searches are exact."""
        return ann_status(self)

    # -- writing ------------------------------------------------------------------------------

    def _need_writer(self) -> None:
        if self.readonly or self._lock_fd is None:
            raise IndexFolderError("the index is open read-only")

    def _truncate_tail(self) -> None:
        """Cut what a crashed writer appended after the last commit; drop stale generations."""
        self._need_writer()
        for kind in KINDS:
            p, width = self._path(kind), self._width(kind)
            if not os.path.exists(p):
                fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
                os.close(fd)
                continue
            if os.path.getsize(p) > self.num_rows * width:
                os.truncate(p, self.num_rows * width)
        keep = {os.path.basename(self._path(kind)) for kind in KINDS}
        ann = self.meta.get("ann")
        if ann:
            keep.add(ann.get("file"))
        for name in os.listdir(self.directory):
            if name.startswith(PREFIXES) and name not in keep:
                try:
                    os.remove(os.path.join(self.directory, name))
                except OSError:
                    pass
        fsync_dir(self.directory)

    def _write_rows(self, kind: str, data: bytes, offset: int, gen: int | None = None) -> None:
        p = self._path(kind, gen)
        fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            view = memoryview(data)
            pos = 0
            while pos < len(view):
                n = os.pwrite(fd, view[pos:pos + (64 << 20)], offset + pos)
                if n <= 0:
                    raise OSError(errno.EIO, "short write")
                pos += n
            os.fsync(fd)
        except OSError:
            try:
                os.ftruncate(fd, offset)
            except OSError:
                pass
            raise
        finally:
            os.close(fd)

    def _commit(self, statements: list[tuple[str, tuple[Any, ...]]], num_rows: int | None = None, **meta: Any) -> list[int | None]:
        con = self._con
        with self._db_lock:
            con.execute("BEGIN IMMEDIATE")
            try:
                ids = [con.execute(sql, params).lastrowid for sql, params in statements]
                if num_rows is not None:
                    meta["num_rows"] = num_rows
                meta["version"] = int(self._version) + 1
                for k_, v in meta.items():
                    con.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (k_, json.dumps(v)))
                con.execute("COMMIT")
            except BaseException:
                if con.in_transaction:
                    con.execute("ROLLBACK")
                raise
        self._version = meta["version"]
        for k_, v in meta.items():
            if k_ not in ("num_rows", "version"):
                self.meta[k_] = v
        self.meta["num_rows"] = self.num_rows if num_rows is None else num_rows
        self.meta["version"] = self._version
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
            dur = float(emb.duration)
            duration = dur if dur == dur else float(tim[-1, 1])
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
            old = self._by_path.get(path)
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
            vid = self._by_path.get(path, rid)
            assert vid is not None  # an INSERT's rowid
            if vid in self._records:
                self.num_live -= int(self._records[vid].num_windows)
            self.num_live += n
            self._records[vid] = VideoRow(vid, path, size, mtime, h, duration, start, n)
            self._by_path[path] = vid
            out.append(int(vid))
        self.num_rows = pos
        self._changed()
        return out

    def _truncate_quietly(self, rows: int) -> None:
        for kind in KINDS:
            try:
                os.truncate(self._path(kind), rows * self._width(kind))
            except OSError:
                pass

    def update_video(self, video_id: int, *, path: str | None = None, size: int | None = None,
                     mtime: float | None = None) -> None:
        """Change a record's path (a moved file) or its size/mtime (a touched file)."""
        self._need_writer()
        r = self._records[int(video_id)]
        new = r._replace(path=norm_path(path) if path else r.path, size=r.size if size is None else size,
                         mtime=r.mtime if mtime is None else mtime)
        self._commit([("UPDATE videos SET path=?, size=?, mtime=? WHERE id=?", (db_path(new.path), new.size, new.mtime,
                                                                                 int(video_id)))])
        del self._by_path[r.path]
        self._records[int(video_id)] = new
        self._by_path[new.path] = int(video_id)
        self._derived.pop("ranges", None)

    def remove_videos(self, video_ids: Iterable[int]) -> None:
        """Remove videos by id (their rows become dead: ``compact`` reclaims them)."""
        self._need_writer()
        ids = [int(v) for v in video_ids]
        if ids:
            self._commit([("DELETE FROM videos WHERE id=?", (v,)) for v in ids])
            for v in ids:
                r = self._records.pop(v, None)
                if r is not None:
                    self._by_path.pop(r.path, None)
                    self.num_live -= int(r.num_windows)
            self._changed()

    def remove_paths(self, paths: Iterable[str | os.PathLike[str]]) -> list[str]:
        """Remove from the index the videos at ``paths`` (files, or folders: every indexed video
        under them; the files need not exist any more). Returns the removed videos' paths; a path
        that matches no indexed video raises ``KeyError`` naming it, before anything is removed."""
        self._need_writer()
        ids: dict[int, None] = {}
        for p in paths:
            ap = user_path(p)
            vid = self._by_path.get(ap)
            if vid is not None:
                ids[vid] = None
                continue
            under = [v for path, v in self._by_path.items() if path.startswith(ap.rstrip(os.sep) + os.sep)]
            if not under:
                raise KeyError(f"{os.fspath(p)} is not in the index")
            ids.update(dict.fromkeys(under))
        removed = [self._records[v].path for v in ids]
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
        try:
            with open(os.path.join(self.directory, ERROR_LOG), "a", encoding="utf-8", errors="backslashreplace") as f:
                shown = path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
                f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')}\t{shown}\t{reason}\n")
        except OSError:
            pass

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
        for kind in KINDS:
            p = self._path(kind, gen)
            if os.path.exists(p):
                os.remove(p)
        pos = 0
        stmts: list[tuple[str, tuple[Any, ...]]] = []
        try:
            for vid, a, b in zip(self._vid, self._rs, self._re):
                vec = np.ascontiguousarray(self._vectors[a:b])
                tim = np.ascontiguousarray(self._times[a:b])
                codes, aux = quantize_rows(vec)
                self._write_rows("vectors", vec.tobytes(), pos * self.dim * 4, gen)
                self._write_rows("times", tim.tobytes(), pos * 16, gen)
                self._write_rows("codes", codes.tobytes(), pos * self.dim, gen)
                self._write_rows("aux", aux.tobytes(), pos * 12, gen)
                stmts.append(("UPDATE videos SET row_start=? WHERE id=?", (pos, int(vid))))
                pos += int(b - a)
            if pos == 0:
                for kind in KINDS:
                    open(self._path(kind, gen), "wb").close()
            fsync_dir(self.directory)
            self._commit(stmts, num_rows=pos, generation=gen, ann=None)
        except OSError as exc:
            for kind in KINDS:
                try:
                    os.remove(self._path(kind, gen))
                except OSError:
                    pass
            raise IndexWriteError(f"could not compact {self.directory} ({exc}); the index is unchanged") from exc
        old = self.generation
        self._load()
        for kind in KINDS:
            try:
                os.remove(self._path(kind, old))
            except OSError:
                pass
        for name in os.listdir(self.directory):
            if name.startswith("ann-"):
                try:
                    os.remove(os.path.join(self.directory, name))
                except OSError:
                    pass
        return True

    def build_ann(self, *, queries: np.ndarray | None = None, nlist: int | None = None, m: int = 0,
                  target_recall: float = 0.98, progress: bool = False) -> dict[str, Any]:
        """Build the approximate index over the live rows; see ``milnce.index.ann.build_ann``."""
        return build_ann(self, queries=queries, nlist=nlist, m=m, target_recall=target_recall, progress=progress)

