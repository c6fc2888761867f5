"""The SQLite side of an index folder: the schema (``meta``, ``videos``, ``errors``), opening a
connection (WAL, or read-only / immutable on a read-only folder), reading ``meta``, the way paths
are stored (text, or raw bytes for names that are not UTF-8) and the one-line reason of an SQLite
failure. ``milnce.index.writer`` owns the transactions."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any

from .errors import IndexDamagedError

__all__ = ["SCHEMA", "connect", "read_meta", "db_path", "from_db", "sqlite_reason"]

SCHEMA = """
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


def connect(db: str, readonly: bool) -> sqlite3.Connection:
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


def read_meta(con: sqlite3.Connection, directory: str = "") -> dict[str, Any]:
    out = {}
    for k, v in con.execute("SELECT key, value FROM meta"):
        try:
            out[k] = json.loads(v)
        except (TypeError, ValueError):
            raise IndexDamagedError(directory, f"the stored {k!r} is not valid JSON") from None
    return out


def db_path(path: str) -> str | bytes:
    """A path as stored in SQLite: text, or its raw bytes when the name is not valid UTF-8 (a
    file system name decoded with surrogateescape); ``from_db`` reverses it exactly."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return os.fsencode(path)


def from_db(value: str | bytes) -> str:
    return value if isinstance(value, str) else os.fsdecode(bytes(value))


def sqlite_reason(exc: BaseException) -> str:
    msg = str(exc)
    if "disk is full" in msg or "disk I/O" in msg:
        return f"the disk is full or failing ({msg}); free some space and run the same command again"
    return msg
