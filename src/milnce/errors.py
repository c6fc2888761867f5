"""The exceptions users can catch: every error milnce reports on purpose is a ``MilnceError``.

The CLI turns these (and only these) into a one-line message and an exit code; anything else
is a bug and keeps its traceback. Each subclass also derives from the built-in exception a
caller would expect (``ValueError``, ``OSError``, ...), so existing ``except`` clauses keep working.
"""

from __future__ import annotations

__all__ = ["MilnceError", "UsageError", "EXIT_CODES"]


class MilnceError(Exception):
    """Base class of the errors milnce raises for bad input, files or settings."""

    exit_code = 2


class UsageError(MilnceError, ValueError):
    """Invalid arguments or settings (out of range, not finite, unknown choice, ...)."""


# Exit codes of the command line (documented in the README):
EXIT_CODES = {
    0: "success",
    1: "finished, but some inputs failed (listed in the output)",
    2: "error: bad arguments, input, weights or index (one-line message)",
    130: "interrupted (Ctrl-C)",
}
