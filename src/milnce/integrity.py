"""Integrity of weights files: zip CRCs, refused pickles, and a cache of verdicts.

A PyTorch checkpoint (``torch.save``) is a zip archive whose members carry a CRC-32; PyTorch
itself does not check them when it memory-maps the file, so a damaged file can load with
silently changed tensors. :func:`zip_problem` checks every member (about 0.1 s for the
125 MB published file). The verdict of a full check (CRCs, keys and shapes, finite values,
the content fingerprint) is remembered in ``$MILNCE_HOME/verified.json`` keyed by the file's
real path, size, mtime, ctime and inode (:func:`milnce.cache.file_stamp`), so later loads of an
unchanged file skip the reading.
"""

from __future__ import annotations

import io
import os
import pickletools
import zipfile
from typing import Any

from .cache import JsonStore, cache_dir, file_stamp

__all__ = ["VERIFIED_FILE", "zip_problem", "pickled_globals", "cached_verdict", "record_verdict"]

VERIFIED_FILE = "verified.json"
_MAX_ENTRIES = 64
_CHUNK = 1 << 22

# Globals a plain tensor checkpoint may name (the ones torch's weights-only unpickler allows).
_TENSOR_GLOBALS = ("torch.", "collections.OrderedDict", "_codecs.encode", "builtins.set")


def zip_problem(path: str) -> str | None:
    """The first damaged member of a zip archive (bad CRC-32, short data), or None if all are intact
    (or the archive cannot be opened at all: the loader then reports a truncated or foreign file)."""
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                try:
                    with zf.open(info) as member:
                        while member.read(_CHUNK):
                            pass
                except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
                    return f"member {info.filename} is damaged ({exc})"
    except (zipfile.BadZipFile, OSError):
        return None
    return None


def pickled_globals(path: str, limit: int = 4) -> list[str]:
    """Python globals (``module.name``) that the pickle(s) of a checkpoint would load, other than
    the tensor machinery of a plain state dict. Best effort: stops at the first unparsable byte."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                names = [n for n in zf.namelist() if n.endswith("data.pkl")]
                if not names:
                    return []
                data = zf.read(names[0])
        else:
            with open(path, "rb") as f:
                data = f.read(1 << 20)
    except (OSError, zipfile.BadZipFile, ValueError):
        return []
    found: list[str] = []
    stream = io.BytesIO(data)
    for _ in range(limit):  # legacy torch files hold several pickles in a row
        strings: list[str] = []
        try:
            for op, arg, _pos in pickletools.genops(stream):
                if op.name in ("GLOBAL", "INST"):
                    found.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.append(f"{strings[-2]}.{strings[-1]}")
                if isinstance(arg, str):
                    strings.append(arg)
        except Exception:  # noqa: BLE001 - garbage after the pickle(s): stop here
            break
        if stream.tell() >= len(data):
            break
    return [g for g in found if not g.startswith(_TENSOR_GLOBALS)]


# --------------------------------------------------------------------------- verdict cache


def _store() -> JsonStore:
    return JsonStore(cache_dir() / VERIFIED_FILE, max_entries=_MAX_ENTRIES, indent=1, sort_keys=False)


def cached_verdict(path: str, st: os.stat_result) -> dict[str, Any] | None:
    """The recorded verdict of ``path`` if the file is unchanged since it was verified (same size,
    mtime, ctime and inode: an in-place edit with the mtime put back still changes the ctime)."""
    entry = _store().get(os.path.realpath(path))
    if not isinstance(entry, dict) or entry.get("stamp") != file_stamp(st):
        return None
    return entry


def record_verdict(path: str, st: os.stat_result, verdict: dict[str, Any]) -> None:
    """Remember that ``path`` (as it was at ``st``) passed verification. Best effort: a read-only
    cache folder only means the next load verifies again."""
    try:
        if file_stamp(os.stat(path)) != file_stamp(st):
            return  # changed while we read it: verify again next time
        _store().put(os.path.realpath(path), {"stamp": file_stamp(st), **verdict})
    except OSError:
        pass
