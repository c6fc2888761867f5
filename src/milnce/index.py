"""A searchable, on-disk index of video moments.

Layout of an index folder::

    index.sqlite        videos, errors and settings (SQLite, WAL journal)
    vectors-G.f32       window embeddings: raw float32 rows (N x 512), append-only
    times-G.f64         window start/end seconds: raw float64 rows (N x 2), append-only
    codes-G.i8, aux-G.f32  int8 codes of the rows + (scale, residual norm, norm), append-only
    ann-G-R.faiss       optional approximate index over the first R rows (``--ann``)
    errors.log          videos that could not be read, with the reason
    .lock               held (fcntl) by the one process that writes

Crash safety: a video's rows are appended and fsync'ed *before* the SQLite transaction that
records them (and the committed row count) commits. A crash or a full disk leaves at worst an
unreferenced tail, which the next writer truncates; readers only ever map the committed rows.
Rows of re-indexed or pruned videos become dead and are skipped; when they exceed a quarter of
the store, the live rows are rewritten into a new generation ``G`` (also committed last).

Search memory-maps the store (``np.memmap``): the page cache holds the vectors once. Exact
search scans the int8 codes (a quarter of the bytes) and re-scores from the float32 rows every
window whose score could reach the top k under a proven bound on the quantisation error, so it
returns what a full float32 scan returns (``exact="scan"`` does that scan). The ANN index
(faiss IVF with 8-bit codes, ``--ann``) gives candidates that are re-scored the same way, so
scores are always exact dot products.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import math
import mmap
import os
import sqlite3
import sys
import threading
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "Index",
    "Moment",
    "VideoRecord",
    "IndexReport",
    "IndexFolderError",
    "IndexNotFoundError",
    "IndexLockedError",
    "IndexMismatchError",
    "IndexWriteError",
    "build_index",
    "find_videos",
    "VIDEO_EXTENSIONS",
    "DEFAULT_SETTINGS",
]

FORMAT_VERSION = 1
DB_NAME = "index.sqlite"
LOCK_NAME = ".lock"
ERROR_LOG = "errors.log"
DIM = 512
VIDEO_EXTENSIONS = frozenset({
    ".mp4", ".m4v", ".mkv", ".webm", ".avi", ".mov", ".mpg", ".mpeg", ".wmv", ".flv", ".gif",
    ".3gp", ".ogv", ".ts", ".mts", ".m2ts", ".vob", ".qt",
})
DEFAULT_SETTINGS = {"fps": 10.0, "num_frames": 32, "size": 224, "stride": 16, "crop": "center"}
_SCAN_BLOCK = 1 << 16  # rows per block of the exact scan
_KINDS = ("vectors", "times", "codes", "aux")
_EXT = {"vectors": "f32", "times": "f64", "codes": "i8", "aux": "f32"}
_PREFIXES = ("vectors-", "times-", "codes-", "aux-", "ann-")
_SCREEN_MIN_ROWS = 20000  # below this the float32 scan is as fast as the screened one
_SCREEN_QUERIES = 8  # queries screened together
_COMPACT_DEAD_SHARE = 0.25


class IndexFolderError(ValueError):
    """A problem with an index folder (reported to the user as one line)."""


IndexError_ = IndexFolderError  # noqa: N816 - short alias used in this module


class IndexNotFoundError(IndexFolderError, FileNotFoundError):
    """The folder holds no index."""


class IndexLockedError(IndexFolderError):
    """Another process is writing to the index."""


class IndexMismatchError(IndexFolderError):
    """The index was built with other weights or other window settings."""


class IndexWriteError(IndexFolderError, OSError):
    """Writing failed (e.g. the disk is full); the index is as of the last committed video."""


@dataclass
class Moment:
    """A stretch of one video that matches a query. ``score``: the best window's dot product."""

    video_id: int
    path: str
    start: float
    end: float
    score: float
    exists: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class VideoRecord:
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
    pruned: list[str] = field(default_factory=list)
    windows_added: int = 0
    video_seconds: float = 0.0
    embed_seconds: float = 0.0
    elapsed: float = 0.0
    num_videos: int = 0
    num_windows: int = 0
    compacted: bool = False
    ann: dict[str, Any] | None = None

    @property
    def speed(self) -> float:
        """Video seconds embedded per wall-clock second of embedding."""
        return self.video_seconds / self.embed_seconds if self.embed_seconds > 0 else 0.0

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
        lines = [f"{self.directory}: " + ", ".join(parts),
                 f"index: {self.num_videos} videos, {self.num_windows} windows"]
        if self.video_seconds:
            lines.append(f"embedded {self.video_seconds / 3600:.3f} video-hours ({self.windows_added} windows) "
                         f"in {self.embed_seconds:.1f} s: {self.speed:.2f}x real time")
        if self.failed:
            lines.append(f"unreadable videos are listed in {os.path.join(self.directory, ERROR_LOG)}")
        if self.ann:
            lines.append(f"ANN: {self.ann.get('kind')} over {self.ann.get('rows')} windows, "
                         f"recall@10 vs exact = {self.ann.get('recall_at_10', float('nan')):.3f} "
                         f"(nprobe {self.ann.get('nprobe')})")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Small helpers


def _now() -> float:
    return time.time()


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def file_hash(path: str, chunk: int = 1 << 20) -> str:
    """Content hash (BLAKE2b-128 of the whole file) used to recognise moved or touched videos."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _norm_path(path: str | os.PathLike[str]) -> str:
    return os.path.abspath(os.fspath(path))


def find_videos(paths: Iterable[str | os.PathLike[str]], recursive: bool = True,
                exclude: Sequence[str] = ()) -> list[str]:
    """Video files under ``paths`` (absolute, sorted, unique). Files named explicitly are kept
    whatever their extension; folders are walked for known video extensions, skipping hidden
    entries and the folders in ``exclude``."""
    out: dict[str, None] = {}
    excl = {_norm_path(e) for e in exclude}
    for p in paths:
        ap = _norm_path(p)
        if os.path.isfile(ap):
            out[ap] = None
        elif os.path.isdir(ap):
            found = []
            for root, dirs, files in os.walk(ap, followlinks=False):
                dirs[:] = sorted(d for d in dirs if not d.startswith(".") and os.path.join(root, d) not in excl)
                if not recursive:
                    dirs[:] = []
                for name in files:
                    if name.startswith("."):
                        continue
                    if os.path.splitext(name)[1].lower() in VIDEO_EXTENSIONS:
                        found.append(os.path.join(root, name))
            for f in sorted(found):
                out[f] = None
        else:
            raise FileNotFoundError(f"no such file or folder: {p}")
    return list(out)


def _probe_duration(path: str) -> float:
    """The header duration in seconds (0 if unknown): only for the progress bar."""
    try:
        import av

        with av.open(path) as c:
            if c.duration:
                return float(c.duration) / 1e6
            for s in c.streams.video:
                if s.duration and s.time_base:
                    return float(s.duration * s.time_base)
    except Exception:  # noqa: BLE001 - unreadable files fail later, with the reason
        pass
    return 0.0


# --------------------------------------------------------------------------------------------
# SQLite


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS videos (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    path TEXT NOT NULL UNIQUE,
    size INTEGER NOT NULL,
    mtime REAL NOT NULL,
    hash TEXT NOT NULL,
    duration REAL NOT NULL,
    row_start INTEGER NOT NULL,
    num_windows INTEGER NOT NULL,
    indexed_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS videos_size ON videos(size);
CREATE TABLE IF NOT EXISTS errors (
    path TEXT PRIMARY KEY,
    size INTEGER,
    mtime REAL,
    reason TEXT NOT NULL,
    time REAL NOT NULL
);
"""


def _connect(db: str, readonly: bool) -> sqlite3.Connection:
    if readonly:
        uri = "file:" + Path(db).as_posix() + "?mode=ro"
        try:
            con = sqlite3.connect(uri, uri=True, timeout=30, check_same_thread=False, isolation_level=None)
            con.execute("SELECT count(*) FROM meta").fetchone()
        except sqlite3.OperationalError:
            # A read-only folder cannot hold the WAL's shared-memory file: read it as immutable.
            uri = "file:" + Path(db).as_posix() + "?mode=ro&immutable=1"
            con = sqlite3.connect(uri, uri=True, timeout=30, check_same_thread=False, isolation_level=None)
    else:
        con = sqlite3.connect(db, timeout=30, check_same_thread=False, isolation_level=None)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=FULL")
    return con


def _read_meta(con: sqlite3.Connection) -> dict[str, Any]:
    return {k: json.loads(v) for k, v in con.execute("SELECT key, value FROM meta")}


# --------------------------------------------------------------------------------------------
# Merging windows into moments


def _components(rows: np.ndarray, video_end: np.ndarray) -> np.ndarray:
    """Labels of runs of consecutive rows of the same video. ``rows`` sorted ascending;
    ``video_end``: exclusive end row of each row's video."""
    if len(rows) == 0:
        return np.zeros(0, dtype=np.int64)
    brk = np.ones(len(rows), dtype=bool)
    brk[1:] = (np.diff(rows) != 1) | (rows[:-1] + 1 >= video_end[:-1])
    return np.cumsum(brk) - 1


def merge_windows(rows: np.ndarray, scores: np.ndarray, video_end: np.ndarray) -> list[tuple[int, int, int, float]]:
    """Merge runs of adjacent windows: ``(first_row, last_row, best_row, best_score)`` per run,
    best first."""
    order = np.argsort(rows, kind="stable")
    r, s, ve = rows[order], scores[order], video_end[order]
    lab = _components(r, ve)
    out = []
    if len(r) == 0:
        return out
    bounds = np.flatnonzero(np.diff(lab)) + 1
    for a, b in zip(np.r_[0, bounds], np.r_[bounds, len(r)]):
        j = a + int(np.argmax(s[a:b]))
        out.append((int(r[a]), int(r[b - 1]), int(r[j]), float(s[j])))
    out.sort(key=lambda t: (-t[3], t[0]))
    return out


# --------------------------------------------------------------------------------------------
# The index


class _RWLock:
    """Many readers (searches) or one writer (reloading the snapshot)."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0

    def read(self) -> "_RWLock._Ctx":
        return _RWLock._Ctx(self, False)

    def write(self) -> "_RWLock._Ctx":
        return _RWLock._Ctx(self, True)

    class _Ctx:
        def __init__(self, lock: "_RWLock", exclusive: bool) -> None:
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


class Index:
    """An opened index folder (a consistent snapshot; ``refresh()`` picks up later commits).

    ``Index.open(folder, model)`` for searching with text; ``search_embeddings`` works without a
    model. Thread-safe for searches.
    """

    def __init__(self, directory: str, con: sqlite3.Connection, model: Any = None, *, readonly: bool = True,
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
        self._load()

    # -- opening ------------------------------------------------------------------------------

    @classmethod
    def open(cls, directory: str | os.PathLike[str], model: Any = None, *, readonly: bool = True) -> "Index":
        """Open an existing index. ``model``: a ``MILNCE`` whose weights built the index (for
        text queries); ``readonly=False`` takes the writer lock (one writer at a time)."""
        d = _norm_path(directory)
        db = os.path.join(d, DB_NAME)
        if not os.path.isdir(d):
            raise IndexNotFoundError(f"no index at {directory}: the folder does not exist "
                                     "(build one with: milnce index VIDEOS... --index DIR)")
        if not os.path.isfile(db):
            raise IndexNotFoundError(f"no index at {directory}: {DB_NAME} is missing "
                                     "(build one with: milnce index VIDEOS... --index DIR)")
        lock_fd = None if readonly else _acquire_lock(d)
        try:
            con = _connect(db, readonly)
            if not readonly:
                con.executescript(_SCHEMA)
            idx = cls(d, con, model, readonly=readonly, lock_fd=lock_fd)
        except sqlite3.DatabaseError as exc:
            if lock_fd is not None:
                os.close(lock_fd)
            raise IndexError_(f"{db}: not a readable index database ({exc})") from exc
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
    def create(cls, directory: str | os.PathLike[str], model: Any, settings: dict[str, Any] | None = None) -> "Index":
        """Open ``directory`` for writing, creating the index if there is none yet."""
        d = _norm_path(directory)
        if os.path.exists(d) and not os.path.isdir(d):
            raise NotADirectoryError(f"index path {directory} exists and is not a folder")
        os.makedirs(d, exist_ok=True)
        lock_fd = _acquire_lock(d)
        try:
            db = os.path.join(d, DB_NAME)
            if not os.path.isfile(db):
                ours = ("vectors-", "times-", "ann-", DB_NAME, ERROR_LOG, ".")
                stray = [n for n in os.listdir(d) if not n.startswith(ours)]
                if stray:
                    raise IndexError_(f"{directory} is not empty and holds no index ({stray[0]}, ...); "
                                      "pick an empty or new folder for the index")
            con = _connect(db, readonly=False)
            con.executescript(_SCHEMA)
            meta = _read_meta(con)
            if not meta:
                s = dict(DEFAULT_SETTINGS)
                s.update({k: v for k, v in (settings or {}).items() if v is not None})
                s["fps"] = float(s["fps"])
                for k in ("num_frames", "size", "stride"):
                    s[k] = int(s[k])
                info = getattr(model, "info", None)
                init = {
                    "format_version": FORMAT_VERSION,
                    "weights_id": model.weights_id,
                    "weights_name": getattr(info, "name", None),
                    "dim": DIM,
                    "settings": s,
                    "num_rows": 0,
                    "generation": 0,
                    "created": _now(),
                    "version": 0,
                }
                con.execute("BEGIN IMMEDIATE")
                con.executemany("INSERT INTO meta(key, value) VALUES (?, ?)", [(k, json.dumps(v)) for k, v in init.items()])
                con.execute("COMMIT")
                _fsync_dir(d)
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

    def check_model(self, model: Any) -> None:
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
                meta = _read_meta(con)
                rows = con.execute(
                    "SELECT id, path, size, mtime, hash, duration, row_start, num_windows FROM videos ORDER BY row_start"
                ).fetchall()
            finally:
                con.execute("COMMIT")
        if not meta:
            raise IndexNotFoundError(f"{self.directory}: the index is empty (no settings); rebuild it")
        if meta.get("format_version", 0) > FORMAT_VERSION:
            raise IndexError_(f"{self.directory}: index format {meta['format_version']} is newer than this milnce "
                              f"understands ({FORMAT_VERSION}); upgrade milnce")
        self.meta = meta
        self.settings: dict[str, Any] = dict(meta["settings"])
        self.weights_id: str = meta["weights_id"]
        self.dim = int(meta.get("dim", DIM))
        self.num_rows = int(meta["num_rows"])
        self.generation = int(meta["generation"])
        self._version = meta.get("version", 0)
        self._records: dict[int, tuple] = {r[0]: r for r in rows}
        self._by_path: dict[str, int] = {r[1]: r[0] for r in rows}
        self.num_live = sum(int(r[7]) for r in rows)
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
            recs = sorted(self._records.values(), key=lambda r: r[6])
            rs = np.array([r[6] for r in recs], dtype=np.int64)
            rc = np.array([r[7] for r in recs], dtype=np.int64)
            d["ranges"] = (rs, rs + rc, np.array([r[0] for r in recs], dtype=np.int64))
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
        return os.path.join(self.directory, f"{kind}-{g}.{_EXT[kind]}")

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
                raise IndexError_(f"{p}: the vector store is missing or shorter than the committed "
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

    def __enter__(self) -> "Index":
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

    def _record(self, r: tuple, check: bool = True) -> VideoRecord:
        return VideoRecord(id=r[0], path=r[1], duration=float(r[5]), num_windows=int(r[7]), size=int(r[2]),
                           mtime=float(r[3]), exists=os.path.isfile(r[1]) if check else True)

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
        vid = self._by_path.get(_norm_path(path))
        return None if vid is None else self._record(self._records[vid])

    def windows(self, video_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(starts, ends, embeddings)`` of one video's windows (copies)."""
        r = self._records[int(video_id)]
        a, n = int(r[6]), int(r[7])
        t = np.array(self._times[a:a + n])
        return t[:, 0], t[:, 1], np.array(self._vectors[a:a + n])

    def errors(self) -> list[tuple[str, str]]:
        """``(path, reason)`` of the videos that could not be read."""
        with self._db_lock:
            return [(p, r) for p, r in self._con.execute("SELECT path, reason FROM errors ORDER BY path")]

    # -- queries ------------------------------------------------------------------------------

    def query_problem(self, query: str) -> str | None:
        """Why a text query cannot be searched (empty, no known word), or None."""
        if not isinstance(query, str):
            return f"query must be a string, got {type(query).__name__}"
        if self.model is None:
            return "the query is empty" if not query.strip() else None
        return self.model.tokenizer.query_problem(query)

    def encode_queries(self, queries: Sequence[str]) -> tuple[np.ndarray, list[str | None]]:
        """Text embeddings (Q x 512; zero rows for unusable queries) and each query's problem."""
        if self.model is None:
            raise IndexError_("this index was opened without a model: pass one to Index.open(folder, model) "
                              "to search with text, or use search_embeddings()")
        problems = [self.query_problem(q) for q in queries]
        emb = np.zeros((len(queries), self.dim), np.float32)
        good = [i for i, p in enumerate(problems) if p is None]
        if good:
            out = self.model.encode_text([queries[i] for i in good])
            emb[good] = out.detach().cpu().numpy().astype(np.float32)
        return emb, problems

    def search(self, query: str | Sequence[str], k: int = 10, *, merge: bool = True, by_video: bool = False,
               exact: bool | str = False) -> list[Moment] | list[list[Moment]]:
        """Best moments for a query (a list of ``Moment``), or for each of several queries (a list
        of lists). A query that is empty or has no known word gives no results (and a warning);
        ``query_problem`` says why. ``merge``: adjacent matching windows of a video form one
        moment; ``by_video``: rank videos by their best moment; ``exact``: skip the ANN index."""
        single = isinstance(query, str)
        queries = [query] if single else list(query)
        if not queries:
            return []
        emb, problems = self.encode_queries(queries)
        for q, p in zip(queries, problems):
            if p is not None:
                warnings.warn(f"{p}; no results", stacklevel=2)
        good = [i for i, p in enumerate(problems) if p is None]
        results: list[list[Moment]] = [[] for _ in queries]
        if good:
            found = self.search_embeddings(emb[good], k, merge=merge, by_video=by_video, exact=exact)
            for i, res in zip(good, found):
                results[i] = res
        return results[0] if single else results

    def search_embeddings(self, text_emb: np.ndarray, k: int = 10, *, merge: bool = True, by_video: bool = False,
                          exact: bool | str = False) -> list[list[Moment]]:
        """Like ``search`` for text embeddings (Q x 512 or 512). ``exact``: False = the ANN index
        if one was built, else exact; True = exact (int8 screening + float32 re-scoring, the same
        results as a full scan); ``"scan"`` = the plain full float32 scan."""
        q = np.asarray(text_emb, dtype=np.float32)
        if q.ndim == 1:
            q = q[None]
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"text embeddings must be Q x {self.dim}, got shape {q.shape}")
        k = int(k)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        with self._state_lock.read():  # refresh() does not swap the snapshot under a search
            if self.num_live == 0:
                return [[] for _ in range(len(q))]
            k = min(k, len(self._records) if by_video else self.num_live)
            searcher = _Searcher(self, q, exact=exact)
            out = []
            for i in range(len(q)):
                if by_video:
                    out.append(self._rank_videos(searcher, i, k, merge))
                else:
                    out.append(self._rank_moments(searcher, i, k, merge))
            return out

    def _video_of(self, rows: np.ndarray) -> np.ndarray:
        """Index into the live ranges for each row (rows must be live)."""
        return np.searchsorted(self._rs, rows, side="right") - 1

    def _moment(self, first: int, last: int, score: float, pos: int, exists: dict[int, bool]) -> Moment:
        vid = int(self._vid[pos])
        path = self._records[vid][1]
        if vid not in exists:
            exists[vid] = os.path.isfile(path)
        return Moment(video_id=vid, path=path, start=float(self._times[first, 0]), end=float(self._times[last, 1]),
                      score=score, exists=exists[vid])

    def _rank_moments(self, searcher: "_Searcher", i: int, k: int, merge: bool) -> list[Moment]:
        exists: dict[int, bool] = {}
        if not merge:
            rows, scores = searcher.top(i, k)
            pos = self._video_of(rows)
            return [self._moment(int(r), int(r), float(s), int(p), exists) for r, s, p in zip(rows, scores, pos)]
        m = min(self.num_live, max(2 * k, k + 8))
        while True:
            rows, scores = searcher.top(i, m)
            pos = self._video_of(rows)
            runs = merge_windows(rows, scores, self._re[pos])
            if len(runs) >= k or m >= self.num_live:
                break
            m = min(self.num_live, 2 * m)
        out = []
        for first, last, best, score in runs[:k]:
            out.append(self._moment(first, last, score, int(self._video_of(np.array([best]))[0]), exists))
        return out

    def _rank_videos(self, searcher: "_Searcher", i: int, k: int, merge: bool) -> list[Moment]:
        exists: dict[int, bool] = {}
        m = min(self.num_live, max(4 * k, 32))
        while True:
            rows, scores = searcher.top(i, m)
            pos = self._video_of(rows)
            if len(np.unique(pos)) >= k or m >= self.num_live:
                break
            m = min(self.num_live, 4 * m)
        runs = merge_windows(rows, scores, self._re[pos]) if merge else [
            (int(r), int(r), int(r), float(s)) for r, s in zip(rows, scores)]
        seen: set[int] = set()
        out = []
        for first, last, best, score in runs:  # best first
            p = int(self._video_of(np.array([best]))[0])
            if p in seen:
                continue
            seen.add(p)
            out.append(self._moment(first, last, score, p, exists))
            if len(out) == k:
                break
        return out

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

    def scores(self, text_emb: np.ndarray, rows: slice | None = None) -> np.ndarray:
        """Exact dot products of text embeddings (Q x 512) with the stored windows (Q x N rows);
        dead rows score -inf."""
        q = np.asarray(text_emb, dtype=np.float32)
        if q.ndim == 1:
            q = q[None]
        a, b = (0, self.num_rows) if rows is None else (rows.start or 0, self.num_rows if rows.stop is None else rows.stop)
        out = np.empty((len(q), b - a), dtype=np.float32)
        for s in range(a, b, _SCAN_BLOCK):
            e = min(b, s + _SCAN_BLOCK)
            out[:, s - a:e - a] = q @ self._vectors[s:e].T
        mask = self.live_mask()
        if mask is not None:
            out[:, ~mask[a:b]] = -np.inf
        return out

    # -- ANN ----------------------------------------------------------------------------------

    def ann(self) -> Any:
        """The loaded approximate index (faiss) or None (none built, stale, or no faiss)."""
        info = self.meta.get("ann")
        if not info:
            return None
        key = info.get("file")
        if self._ann is not None and self._ann_key == key:
            return self._ann
        path = os.path.join(self.directory, key)
        if info.get("generation") != self.generation or not os.path.isfile(path):
            return None
        try:
            import faiss  # noqa: F401
        except ImportError:
            warnings.warn("the index has an ANN index but faiss is not installed (pip install faiss-cpu); "
                          "searching exactly", stacklevel=3)
            return None
        ix = faiss.read_index(path)
        try:
            ivf = faiss.extract_index_ivf(ix)
            ivf.nprobe = int(info.get("nprobe", 16))
            ivf.parallel_mode = 1  # one query's lists spread over the threads
        except Exception:  # noqa: BLE001 - not an IVF index
            pass
        self._ann, self._ann_key = ix, key
        return ix

    # -- writing (readonly=False) -------------------------------------------------------------

    def _need_writer(self) -> None:
        if self.readonly or self._lock_fd is None:
            raise IndexError_("the index is open read-only")

    def _truncate_tail(self) -> None:
        """Cut what a crashed writer appended after the last commit; drop stale generations."""
        self._need_writer()
        for kind in _KINDS:
            p, width = self._path(kind), self._width(kind)
            if not os.path.exists(p):
                fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
                os.close(fd)
                continue
            if os.path.getsize(p) > self.num_rows * width:
                os.truncate(p, self.num_rows * width)
        keep = {os.path.basename(self._path(kind)) for kind in _KINDS}
        ann = self.meta.get("ann")
        if ann:
            keep.add(ann.get("file"))
        for name in os.listdir(self.directory):
            if name.startswith(_PREFIXES) and name not in keep:
                try:
                    os.remove(os.path.join(self.directory, name))
                except OSError:
                    pass
        _fsync_dir(self.directory)

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

    def _commit(self, statements: list[tuple[str, tuple]], num_rows: int | None = None, **meta: Any) -> list[int | None]:
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

    def add_video(self, path: str, emb: Any, *, size: int, mtime: float, content_hash: str) -> int:
        """Store one video's windows (``VideoEmbeddings``): rows first (fsync), then the record.
        Replaces a record of the same path. Returns the video id."""
        return self.add_videos([(path, emb, size, mtime, content_hash)])[0]

    def add_videos(self, items: Sequence[tuple[str, Any, int, float, str]]) -> list[int]:
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
            recs.append((_norm_path(path), int(size), float(mtime), str(content_hash), duration, pos, len(vec)))
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
        now = _now()
        stmts = []
        for path, size, mtime, h, duration, start, n in recs:
            old = self._by_path.get(path)
            if old is not None:
                stmts.append(("UPDATE videos SET size=?, mtime=?, hash=?, duration=?, row_start=?, num_windows=?, "
                              "indexed_at=? WHERE id=?", (size, mtime, h, duration, start, n, now, old)))
            else:
                stmts.append(("INSERT INTO videos(path, size, mtime, hash, duration, row_start, num_windows, "
                              "indexed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (path, size, mtime, h, duration, start, n, now)))
            stmts.append(("DELETE FROM errors WHERE path=?", (path,)))
        try:
            ids = self._commit(stmts, num_rows=pos)
        except sqlite3.Error as exc:
            self._truncate_quietly(n0)
            raise IndexWriteError(f"could not record the videos in {self.directory} ({exc}); the index is intact as "
                                  "of the last committed video: fix the cause and run the same command again") from exc
        out = []
        for (path, size, mtime, h, duration, start, n), rid in zip(recs, ids[0::2]):
            vid = self._by_path.get(path, rid)
            if vid in self._records:
                self.num_live -= int(self._records[vid][7])
            self.num_live += n
            self._records[vid] = (vid, path, size, mtime, h, duration, start, n)
            self._by_path[path] = vid
            out.append(vid)
        self.num_rows = pos
        self._changed()
        return out

    def _truncate_quietly(self, rows: int) -> None:
        for kind in _KINDS:
            try:
                os.truncate(self._path(kind), rows * self._width(kind))
            except OSError:
                pass

    def update_video(self, video_id: int, *, path: str | None = None, size: int | None = None,
                     mtime: float | None = None) -> None:
        """Change a record's path (a moved file) or its size/mtime (a touched file)."""
        self._need_writer()
        r = self._records[int(video_id)]
        new = (_norm_path(path) if path else r[1], r[2] if size is None else size, r[3] if mtime is None else mtime)
        self._commit([("UPDATE videos SET path=?, size=?, mtime=? WHERE id=?", (*new, int(video_id)))])
        del self._by_path[r[1]]
        self._records[int(video_id)] = (r[0], new[0], new[1], new[2], *r[4:])
        self._by_path[new[0]] = int(video_id)
        self._derived.pop("ranges", None)

    def remove_videos(self, video_ids: Iterable[int]) -> None:
        self._need_writer()
        ids = [int(v) for v in video_ids]
        if ids:
            self._commit([("DELETE FROM videos WHERE id=?", (v,)) for v in ids])
            for v in ids:
                r = self._records.pop(v, None)
                if r is not None:
                    self._by_path.pop(r[1], None)
                    self.num_live -= int(r[7])
            self._changed()

    def record_error(self, path: str, reason: str, size: int | None, mtime: float | None) -> None:
        self._need_writer()
        path = _norm_path(path)
        self._commit([("INSERT OR REPLACE INTO errors(path, size, mtime, reason, time) VALUES (?, ?, ?, ?, ?)",
                       (path, size, mtime, reason, _now()))])
        try:
            with open(os.path.join(self.directory, ERROR_LOG), "a", encoding="utf-8") as f:
                f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')}\t{path}\t{reason}\n")
        except OSError:
            pass

    def error_entry(self, path: str) -> tuple[int | None, float | None] | None:
        with self._db_lock:
            row = self._con.execute("SELECT size, mtime FROM errors WHERE path=?", (_norm_path(path),)).fetchone()
        return None if row is None else (row[0], row[1])

    def compact(self) -> bool:
        """Rewrite the live rows into a new generation (drops dead rows and the ANN index)."""
        self._need_writer()
        if self.num_live == self.num_rows:
            return False
        gen = self.generation + 1
        for kind in _KINDS:
            p = self._path(kind, gen)
            if os.path.exists(p):
                os.remove(p)
        pos = 0
        stmts = []
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
                for kind in _KINDS:
                    open(self._path(kind, gen), "wb").close()
            _fsync_dir(self.directory)
            self._commit(stmts, num_rows=pos, generation=gen, ann=None)
        except OSError as exc:
            for kind in _KINDS:
                try:
                    os.remove(self._path(kind, gen))
                except OSError:
                    pass
            raise IndexWriteError(f"could not compact {self.directory} ({exc}); the index is unchanged") from exc
        old = self.generation
        self._load()
        for kind in _KINDS:
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
        """Build the approximate index over the live rows (faiss IVF with 8-bit scalar-quantised
        codes, or PQ with ``m`` bytes per window; candidates are re-scored exactly). Measures recall@10 against exact search on ``queries`` (or held-out rows) and
        picks the smallest ``nprobe`` reaching ``target_recall``."""
        self._need_writer()
        try:
            import faiss
        except ImportError as exc:
            raise IndexError_("--ann needs faiss: pip install faiss-cpu (exact search works without it)") from exc
        n = self.num_rows
        if self.num_live == 0:
            raise IndexError_("the index is empty; add videos before building the ANN index")
        x = self._vectors
        if nlist is None:  # ~sqrt(N) lists: a probe scans ~sqrt(N) codes
            nlist = int(min(65536, max(1, round(math.sqrt(self.num_live)))))
            nlist = min(nlist, max(1, self.num_live // 39))
        # Codes: 8-bit scalar quantisation (a quarter of the float32 store, small score error) for
        # large stores, exact vectors for small ones; PQ (m bytes/window) when asked, for huge ones.
        if m:
            desc = f"IVF{nlist},PQ{m}"
        elif self.num_live >= 20000:
            desc = f"IVF{nlist},SQ8"
        else:
            desc = f"IVF{nlist},Flat"
        ix = faiss.index_factory(self.dim, desc, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(0)
        live = np.flatnonzero(self.live_mask()) if self.live_mask() is not None else None
        ntrain = min(self.num_live, max(nlist * 50, 20000))
        pick = np.sort(rng.choice(self.num_live, size=ntrain, replace=False))
        rows_train = live[pick] if live is not None else pick
        t0 = time.perf_counter()
        ix.train(np.ascontiguousarray(x[rows_train]))
        ids_all = live if live is not None else np.arange(n, dtype=np.int64)
        for s in range(0, len(ids_all), _SCAN_BLOCK * 2):
            ids = ids_all[s:s + _SCAN_BLOCK * 2].astype(np.int64)
            ix.add_with_ids(np.ascontiguousarray(x[ids]), ids)
        build_s = time.perf_counter() - t0
        # Recall@10 of the reranked ANN search against exact search.
        if queries is None or len(queries) == 0:
            qrows = rng.choice(self.num_live, size=min(200, self.num_live), replace=False)
            qrows = live[qrows] if live is not None else qrows
            queries = np.asarray(x[np.sort(qrows)]) + rng.standard_normal((len(qrows), self.dim)).astype(np.float32) * 0.1
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        kk = min(10, self.num_live)
        exact = self.scores(queries)
        truth = np.argpartition(-exact, kk - 1, axis=1)[:, :kk]
        ivf = faiss.extract_index_ivf(ix)
        chosen, recall = nlist, 1.0
        table = {}
        for nprobe in (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512):
            if nprobe > nlist:
                break
            ivf.nprobe = nprobe
            got = _ann_candidates(ix, self._vectors, queries, kk, self.num_rows)
            r = float(np.mean([len(set(g[:kk].tolist()) & set(t.tolist())) / kk for g, t in zip(got, truth)]))
            table[nprobe] = r
            chosen, recall = nprobe, r
            if r >= target_recall:
                break
        else:
            chosen = min(nlist, chosen)
        if recall < target_recall and nlist not in table:
            ivf.nprobe = nlist
            got = _ann_candidates(ix, self._vectors, queries, kk, self.num_rows)
            recall = float(np.mean([len(set(g[:kk].tolist()) & set(t.tolist())) / kk for g, t in zip(got, truth)]))
            chosen = nlist
            table[nlist] = recall
        name = f"ann-{self.generation}-{n}.faiss"
        tmp = os.path.join(self.directory, name + ".tmp")
        try:
            faiss.write_index(ix, tmp)
            fd = os.open(tmp, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
            os.replace(tmp, os.path.join(self.directory, name))
            _fsync_dir(self.directory)
        except (OSError, RuntimeError) as exc:
            try:
                os.remove(tmp)
            except OSError:
                pass
            raise IndexWriteError(f"could not write the ANN index into {self.directory} ({exc})") from exc
        info = {"file": name, "kind": desc, "rows": n, "live": self.num_live, "generation": self.generation,
                "nlist": nlist, "nprobe": chosen, "recall_at_10": recall, "recall_by_nprobe": table,
                "queries": len(queries), "build_s": build_s, "built": _now()}
        old = self.meta.get("ann")
        self._commit([], ann=info)
        self._load()
        if old and old.get("file") != name:
            try:
                os.remove(os.path.join(self.directory, old["file"]))
            except OSError:
                pass
        return info


def _ann_candidates(ix: Any, vectors: np.ndarray, queries: np.ndarray, k: int, rows: int) -> list[np.ndarray]:
    """Top-k rows per query from the ANN index, re-scored exactly from the store (``max(4k, 400)``
    candidates, as search takes)."""
    r = max(4 * k, 400)
    _, ids = ix.search(np.ascontiguousarray(queries, dtype=np.float32), r)
    out = []
    for q, cand in zip(queries, ids):
        cand = cand[(cand >= 0) & (cand < rows)]
        cand = np.unique(cand)
        s = np.asarray(vectors[cand]) @ q
        order = np.argsort(-s, kind="stable")[:k]
        out.append(cand[order])
    return out


def quantize_rows(vec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int8 codes ``c`` and per-row ``(scale, residual norm, norm)`` with ``x ~ scale * c``.

    The scale is rounded *up* to a bfloat16 value (exact in the bf16 kernel), so ``|x / scale|
    <= 127``; the residual norm ``|x - scale * c|`` and the norm are rounded up, so the bound
    on the screening error that they give holds."""
    x = np.asarray(vec, dtype=np.float64)
    amax = np.abs(x).max(axis=1) / 127.0
    s32 = np.nextafter(amax.astype(np.float32), np.float32(np.inf))
    bits = s32.view(np.uint32).astype(np.uint64)
    bits = np.where(bits & 0xFFFF, (bits + 0xFFFF) & 0xFFFF0000, bits).astype(np.uint32)
    scale = bits.view(np.float32)
    scale = np.where(amax > 0, scale, np.float32(1.0)).astype(np.float32)
    codes = np.clip(np.rint(x / scale[:, None]), -127, 127).astype(np.int8)
    resid = np.linalg.norm(x - scale[:, None].astype(np.float64) * codes, axis=1)
    norm = np.linalg.norm(x, axis=1)
    up = np.float32(np.inf)
    aux = np.stack([scale, np.nextafter(resid.astype(np.float32), up), np.nextafter(norm.astype(np.float32), up)], 1)
    return codes, np.ascontiguousarray(aux, dtype=np.float32)


_INT8_KERNEL: list[bool] = []


def _HAVE_INT8_KERNEL() -> bool:  # noqa: N802
    if not _INT8_KERNEL:
        try:
            import torch

            x = torch.ones(1, 32, dtype=torch.bfloat16)
            w = torch.ones(8, 32, dtype=torch.int8)
            out = torch.ops.aten._weight_int8pack_mm(x, w, torch.ones(8, dtype=torch.bfloat16))
            _INT8_KERNEL.append(bool(torch.allclose(out.float(), torch.full((1, 8), 32.0))))
        except Exception:  # noqa: BLE001 - older torch: the float32 scan is used
            _INT8_KERNEL.append(False)
    return _INT8_KERNEL[0]


def _screen_scores(q: np.ndarray, codes: np.ndarray, scales: Any, r_max: float, n_max: float,
                   live: np.ndarray | None) -> Any:
    """Approximate scores ``scale_j * (bf16(q) . c_j)`` of every row (Q x N, torch float32, dead
    rows -inf) and, per query, a bound on ``|q . x_j - approx_j|`` valid for every row."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # read-only memory maps
        c = torch.from_numpy(codes)
    qt = torch.from_numpy(np.ascontiguousarray(q, dtype=np.float32))
    qb = qt.to(torch.bfloat16)
    approx = torch.ops.aten._weight_int8pack_mm(qb, c, scales).float()
    a_max = approx.abs().amax(dim=1).double()  # nan/inf (overflow) show up here
    if not bool(torch.isfinite(a_max).all()):
        return None
    if live is not None:
        approx[:, torch.from_numpy(~live)] = -float("inf")
    qn = qt.double().norm(dim=1)
    eq = (qt.double() - qb.double()).norm(dim=1)
    # q.x - s q_bf.c = q.(x - s c) + (q - q_bf).(s c): Cauchy-Schwarz on both terms, plus the
    # kernel's bf16 output rounding (2^-8 relative) and float32 accumulation, with margin.
    bound = 1.1 * (qn * r_max + eq * (n_max + r_max)) + (2.0 ** -7 + 1e-5) * a_max + 1e-6
    return approx, bound.tolist()


class _Searcher:
    """Top-m live rows per query, exactly (full scan) or via the ANN index + exact re-scoring."""

    def __init__(self, index: Index, q: np.ndarray, exact: bool | str = False) -> None:
        self.index = index
        self.q = q
        self.ann = None if exact else index.ann()
        self._scores: tuple[int, np.ndarray] | None = None
        self._approx: Any = None
        self.no_screen = exact == "scan"  # the plain float32 scan (benchmarks, checks)
        self._cache: dict[int, tuple[int, np.ndarray, np.ndarray]] = {}
        self._ann_cache: dict[int, tuple[int, np.ndarray, np.ndarray]] = {}
        if self.ann is not None:
            self.ann_rows = int(index.meta["ann"]["rows"])

    def _exact_scores(self, i: int) -> np.ndarray:
        """Full float32 scores of query ``i`` (computed for a few queries at a time)."""
        b = i // _SCREEN_QUERIES
        if self._scores is None or self._scores[0] != b:
            self._scores = (b, self.index.scores(self.q[b * _SCREEN_QUERIES:(b + 1) * _SCREEN_QUERIES]))
        return self._scores[1][i % _SCREEN_QUERIES]

    def top(self, i: int, m: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows and exact scores of the best ``m`` live windows for query ``i``, best first."""
        idx = self.index
        m = min(m, idx.num_live)
        hit = self._cache.get(i)
        if hit is not None and hit[0] >= m:
            return hit[1][:m], hit[2][:m]
        if self.ann is not None and m * 4 < idx.num_live:
            rows, scores = self._ann_top(i, m)
        elif (got := self._screened_top(i, m)) is not None:
            rows, scores = got
        else:
            s = self._exact_scores(i)
            if m < len(s):
                part = np.argpartition(-s, m - 1)[:m]
            else:
                part = np.arange(len(s))
            order = np.lexsort((part, -s[part]))
            rows = part[order]
            rows = rows[np.isfinite(s[rows])][:m]
            scores = s[rows]
        self._cache[i] = (m, rows, scores)
        return rows, scores

    def _screened_top(self, i: int, m: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Exact top-m through the int8 codes: a quarter of the bytes of the float32 store are
        scanned, then every row whose score *could* reach the top m (a proven bound on the
        quantisation error) is re-scored from the float32 store. None: use the full scan."""
        idx = self.index
        if self.no_screen or idx.num_rows < _SCREEN_MIN_ROWS or m > 1000:
            return None
        codes = idx._codes
        if codes is None or not _HAVE_INT8_KERNEL():
            return None
        b = i // _SCREEN_QUERIES  # approximate scores for a few queries at a time (N floats each)
        if self._approx is None or self._approx[0] != b:
            got = _screen_scores(self.q[b * _SCREEN_QUERIES:(b + 1) * _SCREEN_QUERIES], codes[0],
                                 *idx._code_stats(), idx.live_mask())
            if got is None:
                self.no_screen = True
                return None
            self._approx = (b, *got)
        approx, bound = self._approx[1][i % _SCREEN_QUERIES], self._approx[2][i % _SCREEN_QUERIES]
        import torch

        top = torch.topk(approx, m).values
        floor = float(top[-1]) - bound  # m rows score at least this
        cand = torch.nonzero(approx >= floor - bound).flatten().numpy()
        if len(cand) > max(50 * m, 20000):  # the bound is too loose here: scan everything
            return None
        # torch, not numpy's BLAS, for the re-scoring: two thread pools fighting over the cores
        # cost tens of ms per query.
        exact = (torch.from_numpy(np.asarray(idx._vectors[cand])) @ torch.from_numpy(self.q[i])).numpy()
        order = np.lexsort((cand, -exact))[:m]
        return cand[order].astype(np.int64), exact[order].astype(np.float32)

    def _ann_top(self, i: int, m: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-m from ``4m`` (at least 400) ANN candidates re-scored exactly; a later call for
        more rows of the same query reuses them while they are enough."""
        hit = self._ann_cache.get(i)
        if hit is not None and 4 * m <= hit[0]:
            return hit[1][:m], hit[2][:m]
        r = max(4 * m, 400, 2 * hit[0] if hit is not None else 0)
        rows, scores = self._ann_fetch(i, r)
        self._ann_cache[i] = (r, rows, scores)
        return rows[:m], scores[:m]

    def _ann_fetch(self, i: int, r: int) -> tuple[np.ndarray, np.ndarray]:
        idx = self.index
        q = self.q[i]
        _, ids = self.ann.search(q[None], r)
        cand = ids[0]
        cand = cand[(cand >= 0) & (cand < self.ann_rows)]
        mask = idx.live_mask()
        if mask is not None:
            cand = cand[mask[cand]]
        cand = np.unique(cand)
        if len(cand):
            import torch

            scores = (torch.from_numpy(np.asarray(idx._vectors[cand])) @ torch.from_numpy(q)).numpy()
        else:
            scores = np.zeros(0, np.float32)
        if self.ann_rows < idx.num_rows:  # rows added after the ANN index was built: scan them
            tail = idx.scores(q[None], slice(self.ann_rows, idx.num_rows))[0]
            ok = np.flatnonzero(np.isfinite(tail))
            cand = np.concatenate([cand, ok + self.ann_rows])
            scores = np.concatenate([scores, tail[ok]])
        order = np.lexsort((cand, -scores))
        return cand[order], scores[order].astype(np.float32)


# --------------------------------------------------------------------------------------------
# Locking


def _acquire_lock(directory: str) -> int:
    path = os.path.join(directory, LOCK_NAME)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        try:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "?"
        except OSError:
            holder = "?"
        os.close(fd)
        if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            raise IndexLockedError(f"another 'milnce index' (pid {holder}) is updating {directory}; wait for it to "
                                   "finish (searching the index meanwhile is fine)") from None
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


# --------------------------------------------------------------------------------------------
# Building


_PROGRAMMING_ERRORS = (TypeError, AttributeError, NameError, AssertionError, MemoryError, ImportError)


def build_index(paths: Iterable[str | os.PathLike[str]], directory: str | os.PathLike[str], model: Any, *,
                prune: bool = False, ann: bool = False, stride: int | None = None, fps: float | None = None,
                num_frames: int | None = None, size: int | None = None, batch_size: int = 4,
                progress: bool = True, recursive: bool = True, retry_errors: bool = False,
                ann_queries: Sequence[str] | None = None) -> IndexReport:
    """Add the videos under ``paths`` to the index in ``directory`` (created if needed).

    Incremental: unchanged videos (same path, size and mtime; or same content hash) are skipped,
    moved ones are recognised by their content, changed ones are re-embedded; ``prune`` drops
    videos whose file is gone. Window settings default to the index's (new index: 32 frames at
    10 fps, 224 px, a window every ``stride`` = 16 frames). Killing it at any point leaves a
    readable index; running it again finishes the job. ``ann``: (re)build the approximate index.
    """
    t_start = time.perf_counter()
    settings = {"fps": fps, "num_frames": num_frames, "size": size, "stride": stride}
    paths = list(paths)
    files = find_videos(paths, recursive=recursive, exclude=[directory])  # before creating anything
    idx = Index.create(directory, model, {k: v for k, v in settings.items() if v is not None})
    report = IndexReport(directory=idx.directory)
    try:
        s = idx.settings
        wanted = set(files)
        pending: list[tuple[str, int, float, str]] = []  # path, size, mtime, why
        missing_by_size: dict[int, list[int]] = {}
        for vid, r in idx._records.items():
            if r[1] not in wanted and not os.path.exists(r[1]):
                missing_by_size.setdefault(int(r[2]), []).append(vid)
        for f in files:
            try:
                st = os.stat(f)
            except OSError as exc:
                report.failed.append((f, f"cannot stat: {exc}"))
                continue
            size_, mtime = int(st.st_size), float(st.st_mtime)
            vid = idx._by_path.get(f)
            if vid is not None:
                r = idx._records[vid]
                if int(r[2]) == size_ and float(r[3]) == mtime:
                    report.unchanged += 1
                    continue
                pending.append((f, size_, mtime, "changed"))
                continue
            err = idx.error_entry(f)
            if err is not None and not retry_errors and err == (size_, mtime):
                report.previously_failed += 1
                continue
            pending.append((f, size_, mtime, "moved?" if size_ in missing_by_size else "new"))

        total_s = sum(_probe_duration(p[0]) for p in pending) if progress and pending else 0.0
        bar = _Progress(len(pending), total_s, enabled=progress and bool(pending))
        delay = float(os.environ.get("_MILNCE_INDEX_TEST_DELAY", "0") or 0)
        try:
            for path, size_, mtime, why in pending:
                bar.start(path)
                try:
                    h = file_hash(path)
                except OSError as exc:
                    idx.record_error(path, f"cannot read: {exc}", size_, mtime)
                    report.failed.append((path, f"cannot read: {exc}"))
                    bar.done(0.0)
                    continue
                vid = idx._by_path.get(path)
                if vid is not None and idx._records[vid][4] == h:  # touched, same content
                    idx.update_video(vid, size=size_, mtime=mtime)
                    report.unchanged += 1
                    bar.done(0.0)
                    continue
                if why == "moved?":
                    match = [v for v in missing_by_size.get(size_, []) if v in idx._records and idx._records[v][4] == h]
                    if match:
                        old_path = idx._records[match[0]][1]
                        idx.update_video(match[0], path=path, size=size_, mtime=mtime)
                        missing_by_size[size_].remove(match[0])
                        report.moved.append((old_path, path))
                        bar.done(0.0)
                        continue
                t0 = time.perf_counter()
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", RuntimeWarning)
                        emb = model.encode_video_file(path, fps=s["fps"], num_frames=s["num_frames"], size=s["size"],
                                                      stride=s["stride"], batch_size=batch_size,
                                                      progress=bar.bar is not None)  # windows of this video
                    if len(emb) == 0:
                        raise ValueError("no frames could be decoded")
                except _PROGRAMMING_ERRORS:
                    raise
                except Exception as exc:  # noqa: BLE001 - unreadable video: log it, go on
                    reason = str(exc) or type(exc).__name__
                    if vid is not None:  # changed and now unreadable: drop its stale windows
                        idx.remove_videos([vid])
                    idx.record_error(path, reason, size_, mtime)
                    report.failed.append((path, reason))
                    bar.done(0.0)
                    continue
                idx.add_video(path, emb, size=size_, mtime=mtime, content_hash=h)
                dt = time.perf_counter() - t0
                dur = float(emb.duration) if emb.duration == emb.duration else float(emb.ends[-1])
                report.embed_seconds += dt
                report.video_seconds += dur
                report.windows_added += len(emb)
                (report.updated if why == "changed" else report.added).append(path)
                bar.done(dur)
                if delay:
                    time.sleep(delay)
        finally:
            bar.close()

        if prune:
            gone = [vid for vid, r in idx._records.items() if not os.path.exists(r[1])]
            report.pruned = [idx._records[v][1] for v in gone]
            idx.remove_videos(gone)
        if idx.num_rows and (idx.num_rows - idx.num_live) > _COMPACT_DEAD_SHARE * idx.num_rows:
            report.compacted = idx.compact()
        if ann:
            info = idx.meta.get("ann")
            fresh = info and info.get("rows") == idx.num_rows and info.get("generation") == idx.generation \
                and os.path.isfile(os.path.join(idx.directory, info.get("file", "")))
            if fresh:
                report.ann = info
            elif idx.num_live:
                qs = None
                if ann_queries is None:
                    words = [str(w) for w in model.tokenizer.vocab[:5000]]
                    rng = np.random.default_rng(0)
                    pick = rng.choice(len(words), size=min(200, len(words)), replace=False)
                    ann_queries = [" ".join(rng.choice(words, size=2)) if j % 2 else words[int(p)]
                                   for j, p in enumerate(pick)]
                if ann_queries:
                    qs = model.encode_text(list(ann_queries)).detach().cpu().numpy().astype(np.float32)
                report.ann = idx.build_ann(queries=qs, progress=progress)
        report.num_videos = len(idx._records)
        report.num_windows = idx.num_live
    finally:
        idx.close()
    report.elapsed = time.perf_counter() - t_start
    return report


class _Progress:
    """Videos done / to do, video-hours and ETA (by video-seconds)."""

    def __init__(self, num_videos: int, total_seconds: float, enabled: bool = True) -> None:
        self.n, self.i = num_videos, 0
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=round(total_seconds / 3600, 4) or None, unit="video-h", file=sys.stderr,
                            bar_format="{desc} {percentage:3.0f}%|{bar}| {n:.3f}/{total:.3f} video-h "
                                       "[{elapsed}<{remaining}{postfix}]" if total_seconds else None,
                            dynamic_ncols=True)

    def start(self, path: str) -> None:
        if self.bar is not None:
            self.bar.set_description(f"videos {self.i}/{self.n}", refresh=False)
            self.bar.set_postfix_str(os.path.basename(path)[:30])

    def done(self, seconds: float) -> None:
        self.i += 1
        if self.bar is not None:
            self.bar.set_description(f"videos {self.i}/{self.n}", refresh=False)
            hours = seconds / 3600
            if self.bar.total is not None and self.bar.n + hours > self.bar.total:
                self.bar.total = self.bar.n + hours
            self.bar.update(hours)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
