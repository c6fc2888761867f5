"""Feature files: one ``.npz`` per video, written atomically, read without pickle.

Arrays: ``video_embedding`` (n x 512 float32), ``mixed_5c`` (n x 1024 float32, when extracted),
``start``/``end`` (n float64 seconds), ``duration`` (float64 seconds, nan if unknown), ``path``
(the video, str) and ``meta`` (a JSON str: format, window settings, features, weights
fingerprint, precision, and the source file's size and mtime). A file that exists is complete:
it is written to a hidden temporary file in the same folder, fsynced, then renamed.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..atomic import atomic_file
from ..errors import MilnceError

__all__ = ["FORMAT", "FeatureFile", "StoreError", "write_feature_file", "read_feature_file", "read_meta",
           "iter_feature_files", "feature_file_paths", "temp_files"]

FORMAT = "milnce-features/1"
_TMP_SUFFIX = ".tmp"


class StoreError(MilnceError, OSError):
    """A feature file could not be written (disk full, permissions) or read."""


@dataclass
class FeatureFile:
    """A feature file's contents (``read_feature_file``)."""

    file: str
    video_path: str
    video_embedding: np.ndarray
    mixed_5c: np.ndarray | None
    start: np.ndarray
    end: np.ndarray
    duration: float
    meta: dict[str, Any]

    def __len__(self) -> int:
        return int(self.start.shape[0])


def _tmp_prefix(target: str) -> str:
    """Temporary files of ``target`` are ``{prefix}{pid}.{random}.tmp`` (``milnce.atomic``)."""
    host = socket.gethostname().replace(".", "_")
    return f".{os.path.basename(target)}.{host}."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _sweep(target: str) -> None:
    """Remove temporary files of ``target`` left by dead processes of this host (kill -9)."""
    d = os.path.dirname(target)
    prefix = _tmp_prefix(target)
    try:
        entries = os.listdir(d or ".")
    except OSError:
        return
    for e in entries:
        if e.startswith(prefix) and e.endswith(_TMP_SUFFIX):
            pid = e[len(prefix):-len(_TMP_SUFFIX)].split(".")[0]
            if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(d, e))


def temp_files(out_dir: str) -> list[str]:
    """Leftover temporary files below ``out_dir`` (from interrupted writers)."""
    found = []
    for root, _dirs, files in os.walk(out_dir):
        found += [os.path.join(root, f) for f in files
                  if f.startswith(".") and ".npz." in f and f.endswith(_TMP_SUFFIX)]
    return sorted(found)


def write_feature_file(target: str, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """Write ``arrays`` + ``meta`` to ``target`` atomically (temporary file, fsync, rename)."""
    d = os.path.dirname(target) or "."
    try:
        os.makedirs(d, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create the output folder {d}: {exc.strerror or exc}") from exc
    _sweep(target)
    data: dict[str, Any] = dict(arrays)  # Any: savez's ``**kwds`` share a name space with its bool option
    data["meta"] = np.asarray(json.dumps(meta, sort_keys=True), dtype=np.str_)
    try:
        with atomic_file(target, prefix=_tmp_prefix(target)) as f:
            np.savez(f, **data)
    except OSError as exc:
        raise StoreError(f"cannot write {target}: {exc.strerror or exc}") from exc
    with contextlib.suppress(OSError):  # make the rename itself durable
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def read_meta(path: str) -> dict[str, Any] | None:
    """The ``meta`` dict of a feature file, or None if it is not a readable feature file."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if "meta" not in z.files:
                return None
            meta = json.loads(str(z["meta"]))
    except (OSError, ValueError, KeyError, EOFError):
        return None
    except Exception:  # zipfile.BadZipFile and friends: a damaged file
        return None
    return meta if isinstance(meta, dict) and meta.get("format") == FORMAT else None


def read_feature_file(path: str | os.PathLike[str]) -> FeatureFile:
    """Load a feature file (``np.load(allow_pickle=False)``); ``StoreError`` if it is not one."""
    p = os.fspath(path)
    try:
        with np.load(p, allow_pickle=False) as z:
            files = set(z.files)
            missing = {"video_embedding", "start", "end", "meta"} - files
            if missing:
                raise StoreError(f"{p}: not a milnce feature file (missing {', '.join(sorted(missing))})")
            meta = json.loads(str(z["meta"]))
            return FeatureFile(
                file=p,
                video_path=str(z["path"]) if "path" in files else str(meta.get("source", {}).get("path", "")),
                video_embedding=z["video_embedding"],
                mixed_5c=z["mixed_5c"] if "mixed_5c" in files else None,
                start=z["start"],
                end=z["end"],
                duration=float(z["duration"]) if "duration" in files else float("nan"),
                meta=meta,
            )
    except StoreError:
        raise
    except Exception as exc:
        raise StoreError(f"{p}: cannot read the feature file ({exc})") from exc


def iter_feature_files(out_dir: str | os.PathLike[str]) -> Iterator[tuple[str, FeatureFile]]:
    """``(video_path, FeatureFile)`` for every feature file below ``out_dir``, in path order
    (temporary files of interrupted writers are skipped; unreadable files raise ``StoreError``)."""
    for file in feature_file_paths(out_dir):
        ff = read_feature_file(file)
        if ff.meta.get("format") == FORMAT:
            yield ff.video_path, ff


def feature_file_paths(out_dir: str | os.PathLike[str]) -> Iterator[str]:
    """The ``.npz`` files below ``out_dir`` in path order, without reading them (hidden files and
    folders, such as temporary files of interrupted writers, are skipped)."""
    root = os.fspath(out_dir)
    if not os.path.isdir(root):
        raise StoreError(f"{root}: no such folder")
    for d, dirs, files in os.walk(root):
        dirs[:] = sorted(x for x in dirs if not x.startswith("."))
        for name in sorted(files):
            if name.endswith(".npz") and not name.startswith("."):
                yield os.path.join(d, name)
