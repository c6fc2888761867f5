"""Errors about index folders (all ``MilnceError``s: the CLI reports them as one line)."""

from __future__ import annotations

from ..errors import MilnceError

__all__ = ["IndexFolderError", "IndexNotFoundError", "IndexLockedError", "IndexMismatchError", "IndexWriteError",
           "IndexDamagedError"]


class IndexFolderError(MilnceError, ValueError):
    """A problem with an index folder (reported to the user as one line)."""


class IndexNotFoundError(IndexFolderError, FileNotFoundError):
    """The folder holds no index."""


class IndexLockedError(IndexFolderError):
    """Another process is writing to the index."""


class IndexMismatchError(IndexFolderError):
    """The index was built with other weights or other window settings."""


class IndexWriteError(IndexFolderError, OSError):
    """Writing failed (e.g. the disk is full); the index is as of the last committed video."""



class IndexDamagedError(IndexFolderError):
    """The index's files contradict each other (edited by hand, corrupted): refuse to guess."""

    def __init__(self, directory: str, what: str) -> None:
        super().__init__(f"index damaged: {directory}: {what} (delete the folder and run milnce index again "
                         "to rebuild it)")
