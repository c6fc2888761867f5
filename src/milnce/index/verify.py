"""Open-time checks of an index's committed state: the settings and video rows read from SQLite
are refused (``IndexDamagedError``, ``IndexNotFoundError``, ``IndexFolderError``) when they cannot
be right, before anything is mapped or searched. (A vector file shorter than the committed rows is
caught when ``Index`` maps it.)"""

from __future__ import annotations

import math
from typing import Any

from ..errors import UsageError
from ..windows import WindowSettings
from .errors import IndexDamagedError, IndexFolderError, IndexMismatchError, IndexNotFoundError
from .layout import FORMAT_VERSION

__all__ = ["check_snapshot", "check_rows", "check_settings"]


def check_snapshot(directory: str, meta: dict[str, Any], rows: list[Any]) -> None:
    """Refuse an empty index, a newer format, and settings or video rows that cannot be right."""
    if not meta:
        raise IndexNotFoundError(f"{directory}: the index is empty (no settings); rebuild it")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise IndexFolderError(f"{directory}: index format {meta['format_version']} is newer than this milnce "
                               f"understands ({FORMAT_VERSION}); upgrade milnce")
    check_rows(directory, meta, rows)


def check_rows(directory: str, meta: dict[str, Any], rows: list[Any]) -> None:
    """Refuse settings and video rows that cannot be right (``IndexDamagedError``)."""
    for key, typ in (("settings", dict), ("weights_id", str), ("num_rows", int), ("generation", int)):
        if not isinstance(meta.get(key), typ) or isinstance(meta.get(key), bool):
            raise IndexDamagedError(directory, f"the stored {key!r} is missing or not a {typ.__name__}")
    if meta["num_rows"] < 0 or meta["generation"] < 0:
        raise IndexDamagedError(directory, "negative row count or generation")
    try:
        WindowSettings.from_dict(meta["settings"])
    except (UsageError, TypeError, ValueError) as exc:
        raise IndexDamagedError(directory, f"invalid window settings ({exc})") from None
    end, prev = 0, None
    for r in rows:  # sorted by row_start
        vid, path, size, mtime, h, duration, start, n = r
        if not (isinstance(start, int) and isinstance(n, int)) or start < 0 or n < 1:
            raise IndexDamagedError(directory, f"video {vid} ({path!r}) has rows {start!r}+{n!r}")
        if start + n > meta["num_rows"]:
            raise IndexDamagedError(directory, f"video {vid} ({path!r}) claims rows {start}..{start + n - 1} but "
                                               f"the store holds {meta['num_rows']}")
        if start < end:
            raise IndexDamagedError(directory, f"video {vid} ({path!r}) and video {prev} share store rows "
                                               f"from {start}")
        end, prev = start + n, vid



def check_settings(directory: str, have: dict[str, Any], settings: dict[str, Any]) -> None:
    """Refuse window ``settings`` that differ from an index's (``have``): ``IndexMismatchError``."""
    bad = []
    for k, v in settings.items():
        if v is None or k not in have:
            continue
        same = math.isclose(float(v), float(have[k])) if isinstance(have[k], (int, float)) else v == have[k]
        if not same:
            bad.append(f"{k}={v} (index: {have[k]})")
    if bad:
        raise IndexMismatchError(
            f"the index at {directory} was built with other window settings: {', '.join(bad)}; "
            "leave these options out to reuse the index's, or use another folder"
        )
