"""The exceptions users can catch: every error milnce reports on purpose is a ``MilnceError``.

The CLI turns these (and only these) into a one-line message and an exit code; anything else
is a bug and keeps its traceback. Each subclass also derives from the built-in exception a
caller would expect (``ValueError``, ``OSError``, ...), so existing ``except`` clauses keep working.
"""

from __future__ import annotations

import os

__all__ = ["MilnceError", "UsageError", "MissingFileError", "NotAFolderError", "OutputError", "TrainingError",
           "EXIT_CODES"]


class MilnceError(Exception):
    """Base class of the errors milnce raises for bad input, files or settings."""

    exit_code = 2


class UsageError(MilnceError, ValueError):
    """Invalid arguments or settings (out of range, not finite, unknown choice, ...)."""


class MissingFileError(MilnceError, FileNotFoundError):
    """A file or folder the caller named (weights, vocabulary, ...) does not exist."""


class NotAFolderError(MilnceError, NotADirectoryError):
    """A path that must be a folder (an output folder, an index) is a file."""


class OutputError(MilnceError, OSError):
    """A file could not be written (read-only folder, disk full, permissions). ``errno``,
    ``strerror`` and ``filename`` are the underlying ``OSError``'s."""

    def __init__(self, path: str | os.PathLike[str], cause: OSError) -> None:
        super().__init__(cause.errno, cause.strerror or str(cause))
        self.filename = os.fspath(path)

    def __str__(self) -> str:
        return f"cannot write {self.filename}: {self.strerror}"


class TrainingError(MilnceError, RuntimeError):
    """Training cannot go on: the loss, the weights or the batch-norm statistics went non-finite."""


# Exit codes of the command line (documented in the README):
EXIT_CODES = {
    0: "success",
    1: "finished, but some inputs failed (listed in the output)",
    2: "error: bad arguments, input, weights or index (one-line message)",
    130: "interrupted (Ctrl-C)",
}
