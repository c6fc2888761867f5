"""The files of an index folder below SQLite: creating the folder's database with its first
settings, appending store rows (fsync'ed), cutting a crashed writer's tail, writing a compacted
generation, removing old ones, and ``errors.log``. ``milnce.index.writer.Index`` decides when."""

from __future__ import annotations

import errno
import json
import os
import shutil
import sqlite3
import time
from typing import Any

import numpy as np

from ..atomic import fsync_dir
from ..printable import show_path
from .database import SCHEMA, connect, read_meta
from .errors import IndexFolderError
from .layout import DB_NAME, DIM, ERROR_LOG, FORMAT_VERSION, KINDS, PREFIXES, now
from .screen import quantize_rows
from .snapshot import Snapshot, row_width, store_path

__all__ = ["init_folder", "write_rows", "truncate_tail", "truncate_rows", "write_generation", "remove_generation",
           "append_error_log"]


def init_folder(d: str, directory: str | os.PathLike[str], first: dict[str, Any]) -> sqlite3.Connection:
    """The writable database of the index folder ``d``, created with the settings ``first``
    (``weights_id``, ``weights_name``, ``settings``) when the folder holds no index yet; a folder
    with other files and no index is refused."""
    db = os.path.join(d, DB_NAME)
    if not os.path.isfile(db):
        ours = ("vectors-", "times-", "ann-", DB_NAME, ERROR_LOG, ".")
        stray = [n for n in os.listdir(d) if not n.startswith(ours)]
        if stray:
            raise IndexFolderError(f"{directory} is not empty and holds no index ({stray[0]}, ...); "
                                   "pick an empty or new folder for the index")
    con = connect(db, readonly=False)
    try:
        con.executescript(SCHEMA)
        if not read_meta(con, d):
            init = {"format_version": FORMAT_VERSION, **first, "dim": DIM, "num_rows": 0, "generation": 0,
                    "created": now(), "version": 0, "roots": []}
            con.execute("BEGIN IMMEDIATE")
            con.executemany("INSERT INTO meta(key, value) VALUES (?, ?)", [(k, json.dumps(v)) for k, v in init.items()])
            con.execute("COMMIT")
            fsync_dir(d)
    except BaseException:
        con.close()
        raise
    return con


def write_rows(path: str, data: bytes, offset: int) -> None:
    """Write ``data`` at ``offset`` of a store file and fsync it (cut back to ``offset`` on failure)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
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


def truncate_tail(directory: str, generation: int, num_rows: int, dim: int, ann_file: str | None) -> None:
    """Cut what a crashed writer appended after the committed ``num_rows``; drop the files of
    other generations (and ANN files other than ``ann_file``)."""
    for kind in KINDS:
        p, width = store_path(directory, kind, generation), row_width(kind, dim)
        if not os.path.exists(p):
            fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
            os.close(fd)
            continue
        if os.path.getsize(p) > num_rows * width:
            os.truncate(p, num_rows * width)
    keep = {os.path.basename(store_path(directory, kind, generation)) for kind in KINDS}
    if ann_file:
        keep.add(ann_file)
    for name in os.listdir(directory):
        if name.startswith(PREFIXES) and name not in keep:
            try:
                os.remove(os.path.join(directory, name))
            except OSError:
                pass
    fsync_dir(directory)


def truncate_rows(directory: str, generation: int, rows: int, dim: int) -> None:
    """Cut the store files back to ``rows`` rows (best effort: after a failed append)."""
    for kind in KINDS:
        try:
            os.truncate(store_path(directory, kind, generation), rows * row_width(kind, dim))
        except OSError:
            pass


def write_generation(directory: str, gen: int, snap: Snapshot) -> list[tuple[int, int]]:
    """Write the live rows of ``snap`` into the store files of generation ``gen`` (fsync'ed);
    returns each video's ``(id, new row_start)``."""
    remove_generation(directory, gen)
    pos = 0
    starts: list[tuple[int, int]] = []
    rs, re_, vids = snap.ranges()
    for vid, a, b in zip(vids, rs, re_):
        vec = np.ascontiguousarray(snap.vectors[a:b])
        codes, aux = quantize_rows(vec)
        for kind, data in (("vectors", vec), ("times", np.ascontiguousarray(snap.times[a:b])), ("codes", codes),
                           ("aux", aux)):
            write_rows(store_path(directory, kind, gen), data.tobytes(), pos * row_width(kind, snap.dim))
        starts.append((int(vid), pos))
        pos += int(b - a)
    if pos == 0:
        for kind in KINDS:
            open(store_path(directory, kind, gen), "wb").close()
    fsync_dir(directory)
    return starts


def remove_generation(directory: str, gen: int, *, ann: bool = False) -> None:
    """Remove the store files of generation ``gen`` (and, with ``ann``, every ANN file)."""
    for kind in KINDS:
        try:
            os.remove(store_path(directory, kind, gen))
        except OSError:
            pass
    if ann:
        for name in os.listdir(directory):
            if name.startswith("ann-"):
                p = os.path.join(directory, name)
                try:  # a faiss file, or an IVF-PQ folder (--ann pq)
                    shutil.rmtree(p) if os.path.isdir(p) and not os.path.islink(p) else os.remove(p)
                except OSError:
                    pass


def append_error_log(directory: str, path: str, reason: str) -> None:
    """Append ``path`` and ``reason`` to ``errors.log`` (best effort)."""
    try:
        with open(os.path.join(directory, ERROR_LOG), "a", encoding="utf-8", errors="backslashreplace") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')}\t{show_path(path)}\t{show_path(reason)}\n")
    except OSError:
        pass
