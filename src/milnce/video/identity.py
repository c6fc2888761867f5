"""Whether an opened file is still the file that was indexed: the one check that file serving
(``milnce.server.files.open_indexed_file``), the clip endpoint and ``milnce clip``
(``milnce.video.cut.open_checked``) share.

A path is opened with ``OPEN_FLAGS`` (read-only, ``O_NONBLOCK`` so a FIFO put in its place cannot
hang, close-on-exec) and ``O_NOFOLLOW`` where links are not allowed; ``identity_problem`` then
reads the ``fstat`` of the *opened* descriptor: a regular file with the size and modification time
recorded at indexing, or the reason why not. Callers turn the reason into their own error (409 for
the server, ``SourceChangedError`` for ``milnce clip``) and unblock the descriptor
(``os.set_blocking``) before use.
"""

from __future__ import annotations

import os
import stat

__all__ = ["OPEN_FLAGS", "NOFOLLOW", "identity_problem"]

OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def identity_problem(st: os.stat_result, size: int, mtime: float) -> str | None:
    """Why the opened file (its ``fstat``) is not the indexed one (``size`` bytes, modified at
    ``mtime``), or None when it is."""
    if not stat.S_ISREG(st.st_mode):
        return "is no longer a regular file"
    if int(st.st_size) != int(size) or float(st.st_mtime) != float(mtime):
        return "changed since indexing (size or modification time differ from the indexed file's)"
    return None
