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
from typing import Any, Protocol

import numpy as np

from ..atomic import atomic_file
from ..errors import MilnceError
from ..video import (
    FORMAT,
    EmbeddingsFileError,
    VideoWindows,
    check_crc,
    check_structure,
    meta_problem,
    write_npz,
)
from .inputs import VideoInput, output_path

__all__ = ["FORMAT", "StoreError", "write_feature_file", "read_feature_file", "read_meta",
           "inspect_meta", "iter_feature_files", "feature_file_paths", "temp_files", "check_structure", "check_crc", "Layout", "NpzLayout"]

_TMP_SUFFIX = ".tmp"


class StoreError(MilnceError, OSError):
    """A feature file could not be written (disk full, permissions) or read."""


class Layout(Protocol):
    """Where and how ``extract``/``check`` keep one output per video (``NpzLayout`` by default;
    ``recipe_store.RecipeLayout`` for the recipes' flat ``.npy`` files + sidecar manifest)."""

    def prepare(self, out_dir: str) -> None:
        """Called once per run before anything is planned (create folders, write a manifest)."""

    def target(self, out_dir: str, item: VideoInput) -> str:
        """The output file of ``item`` (its existence means "maybe done")."""

    def read_meta(self, target: str) -> dict[str, Any] | None:
        """The stored meta (settings, weights, source...), None when missing or damaged (cheaply checked)."""

    def write(self, target: str, arrays: dict[str, Any], meta: dict[str, Any]) -> None:
        """Write one video's output atomically (``StoreError`` when it cannot)."""

    def verify(self, target: str) -> str | None:
        """A full integrity check (``--verify-files``): what is damaged, or None."""


class NpzLayout:
    """The default layout: ``DIR/<relative path>.npz`` (``inputs.output_path``), ``VideoWindows``'
    ``.npz`` format (``write_feature_file`` / ``read_meta``; ``check_crc`` for ``--verify-files``)."""

    def prepare(self, out_dir: str) -> None:
        return None

    def target(self, out_dir: str, item: VideoInput) -> str:
        return output_path(out_dir, item)

    def read_meta(self, target: str) -> dict[str, Any] | None:
        return read_meta(target)

    def write(self, target: str, arrays: dict[str, Any], meta: dict[str, Any]) -> None:
        write_feature_file(target, arrays, meta)

    def verify(self, target: str) -> str | None:
        return check_crc(target)


def _tmp_prefix(target: str) -> str:
    """Temporary files of ``target`` are ``{prefix}{pid}.{random}.tmp`` (``milnce.atomic``)."""
    host = socket.gethostname().replace(".", "_")
    return f".{os.path.basename(target)}.{host}."


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` (of this host) still runs; a zombie (exited, not yet reaped) does not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
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
            if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(d, e))


def temp_files(out_dir: str) -> list[str]:
    """Leftover temporary files below ``out_dir`` (from interrupted writers)."""
    found = []
    for root, _dirs, files in os.walk(out_dir):
        found += [os.path.join(root, f) for f in files
                  if f.startswith(".") and ".npz." in f and f.endswith(_TMP_SUFFIX)]
    return sorted(found)


def write_feature_file(target: str, arrays: dict[str, Any], meta: dict[str, Any]) -> None:
    """Write ``arrays`` + ``meta`` to ``target`` atomically (temporary file, fsync, rename)."""
    d = os.path.dirname(target) or "."
    try:
        os.makedirs(d, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create the output folder {d}: {exc.strerror or exc}") from exc
    _sweep(target)
    try:
        with atomic_file(target, prefix=_tmp_prefix(target)) as f:
            write_npz(f, arrays, meta)
    except OSError as exc:
        raise StoreError(f"cannot write {target}: {exc.strerror or exc}") from exc
    with contextlib.suppress(OSError):  # make the rename itself durable
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def read_meta(path: str) -> dict[str, Any] | None:
    """The ``meta`` dict of a feature file, or None if it is not a readable, whole feature file
    (the cheap structural check of ``check_structure`` included: a damaged file is redone)."""
    return inspect_meta(path)[0]


def inspect_meta(path: str) -> tuple[dict[str, Any] | None, str | None]:
    """``(meta, None)`` for a readable, whole feature file (``read_meta``), else ``(None, why)``:
    a damaged zip, a member missing or of the wrong size, a meta that is not JSON, has fields of
    the wrong type (``video.result.meta_problem``) or is not of this format."""
    why = check_structure(path)
    if why is not None:
        return None, why
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
    except Exception as exc:  # noqa: BLE001 - zipfile.BadZipFile, JSON errors and friends: a damaged file
        return None, f"damaged meta ({' '.join(str(exc).split()) or type(exc).__name__})"
    why = meta_problem(meta)
    if why is not None:
        return None, why
    if meta.get("format") != FORMAT:
        return None, f"not a milnce feature file (format {meta.get('format')!r}, expected {FORMAT!r})"
    return meta, None


def read_feature_file(path: str | os.PathLike[str]) -> VideoWindows:
    """Load a feature file (pickle-free) as ``VideoWindows``; ``StoreError`` (one line naming the
    file) if it is not one or is damaged."""
    p = os.fspath(path)
    try:
        ff = VideoWindows.load(p)
    except EmbeddingsFileError as exc:
        raise StoreError(str(exc)) from exc
    if not ff.meta or "video_embedding" not in _members(p):
        raise StoreError(f"{p}: not a milnce feature file (missing meta)")
    return ff


def _members(path: str) -> set[str]:
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            return {n[:-4] for n in z.namelist() if n.endswith(".npy")}
    except (OSError, zipfile.BadZipFile):
        return set()


def iter_feature_files(out_dir: str | os.PathLike[str]) -> Iterator[tuple[str, VideoWindows]]:
    """``(video_path, VideoWindows)`` for every feature file below ``out_dir``, in path order
    (temporary files of interrupted writers are skipped; unreadable files raise ``StoreError``)."""
    for file in feature_file_paths(out_dir):
        ff = read_feature_file(file)
        if ff.meta.get("format") == FORMAT:
            yield ff.path, ff


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
