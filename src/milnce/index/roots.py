"""Collection roots: the folders (or single files) an index's videos come from.

``milnce index PATH...`` records its ``PATH``s; ``milnce index --from-features DIR --root ROOT``
records ``ROOT`` (required there: paths inside feature files are untrusted, and the files need
not exist when the index is built). The server serves only files inside these roots
(``milnce.server.files``). An index made before roots were recorded gets the common parent
folder of its videos (``serving_roots``), or none when that is the file-system root: its files
are then not served until ``milnce index --index DIR --root ROOT`` records the roots.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

__all__ = ["relative_to_root", "inside_roots", "serving_roots"]


def relative_to_root(path: str, root: str) -> str | None:
    """``path`` relative to ``root`` (``""`` when they are the same), or None when it is not inside.
    Both absolute and normalised (``os.path.abspath``): a plain string comparison, no file system."""
    root = root.rstrip(os.sep) or os.sep
    if path == root:
        return ""
    prefix = root if root.endswith(os.sep) else root + os.sep
    return path[len(prefix):] if path.startswith(prefix) else None


def inside_roots(path: str, roots: Iterable[str]) -> bool:
    """Whether ``path`` (absolute) is inside one of ``roots`` (by name)."""
    return any(relative_to_root(path, r) is not None for r in roots)


def serving_roots(recorded: Sequence[str], video_paths: Iterable[str]) -> tuple[list[str], str | None]:
    """The roots files are served from, and a note when they had to be guessed: the recorded
    roots; for an index without any, the common parent folder of its videos unless that is the
    file-system root (then none: nothing is served)."""
    if recorded:
        return list(recorded), None
    parents = {os.path.dirname(p) for p in video_paths}
    if not parents:
        return [], None
    try:
        common = os.path.commonpath(sorted(parents))
    except ValueError:
        common = os.sep
    if common in (os.sep, "") or os.path.dirname(common) == common:
        return [], ("the index records no collection roots and its videos share no folder below /: files are not "
                    "served (record the roots with: milnce index --index DIR --root FOLDER)")
    return [common], (f"the index records no collection roots: serving files under {common} (their common folder; "
                      "record the roots with: milnce index --index DIR --root FOLDER)")
