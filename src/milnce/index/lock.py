"""The one-writer lock of an index folder (``fcntl.flock`` on ``.lock``, which holds the writer's pid).

Reading needs no lock. Where ``fcntl`` does not exist (Windows), ``import milnce.index`` and
searching still work; taking the lock raises ``IndexFolderError``.
"""

from __future__ import annotations

import errno
import os

from .errors import IndexFolderError, IndexLockedError
from .layout import LOCK_NAME

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

__all__ = ["acquire_lock", "check_unlocked"]


def acquire_lock(directory: str) -> int:
    """Take the writer lock of an index folder; returns the lock file's descriptor (close it to
    release). Raises ``IndexLockedError`` if another process holds it."""
    if fcntl is None:
        raise IndexFolderError(f"writing to the index at {directory} needs file locking (fcntl), which this "
                               "platform lacks; searching an index works here, building one does not")
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


def check_unlocked(directory: str | os.PathLike[str]) -> None:
    """Raise ``IndexLockedError`` now if another process is writing to the index in ``directory``
    (an existing folder); lets a command say so before slow work such as loading the model."""
    os.close(acquire_lock(os.path.abspath(os.fspath(directory))))
