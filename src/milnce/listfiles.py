"""Bounded readers of user-given list files: lines and CSV rows, read without ever holding more
than a bounded line, row or number of entries.

Every list file milnce reads (``--ids``, ``--queries-file``, extract's ``.txt``/``.csv`` video
lists, training and evaluation CSVs, release split files) goes through here. A device, folder or
socket (a FIFO too, unless the caller streams one), a line over the bound, NUL bytes, text that
is not UTF-8 and too many entries are each refused in one line that names the file.
"""

from __future__ import annotations

import csv
import os
import stat
from collections.abc import Callable, Iterator
from typing import TextIO

from .errors import MilnceError, UsageError

__all__ = ["MAX_PATH_LINE", "MAX_CSV_ROW", "MAX_ENTRIES", "open_list", "bounded_lines", "read_lines",
           "read_csv_rows"]

MAX_PATH_LINE = 4096  # characters: a longer "line" is not a path (PATH_MAX on Linux)
MAX_CSV_ROW = 64 * 1024  # characters in one CSV line (and in one field)
MAX_ENTRIES = 10_000_000  # entries (lines or rows) in one list: HowTo100M has 1.2 million videos

ErrorType = Callable[[str], MilnceError]


def open_list(path: str | os.PathLike[str], label: str, *, fifo: bool = False,
              encoding: str = "utf-8-sig", error: ErrorType = UsageError) -> TextIO:
    """``path`` opened as text (universal newlines kept for CSV: ``newline=""``). Refuses what is
    not a regular file (a FIFO allowed when ``fifo``) before opening it."""
    try:
        st = os.stat(path)
        if not (stat.S_ISREG(st.st_mode) or (fifo and stat.S_ISFIFO(st.st_mode))):
            kinds = "a device, folder or socket" if fifo else "a device, FIFO, folder or socket"
            raise error(f"{label}: not a text file ({kinds})")
        return open(path, encoding=encoding, newline="")  # noqa: SIM115 - the caller closes it
    except OSError as exc:
        raise error(f"{label}: cannot read it ({exc.strerror or exc})") from None


def bounded_lines(f: TextIO, label: str, *, max_line: int, what: str,
                  error: ErrorType = UsageError) -> Iterator[str]:
    """The lines of ``f`` as read (line ends kept), each checked: at most ``max_line`` characters,
    no NUL byte, UTF-8. ``what`` names what the file should be, for the messages."""
    n = 0
    while True:
        try:
            line = f.readline(max_line + 1)
        except UnicodeDecodeError:
            raise error(f"{label}: line {n + 1} is not UTF-8 text") from None
        except OSError as exc:
            raise error(f"{label}: cannot read it ({exc.strerror or exc})") from None
        if not line:
            return
        n += 1
        if len(line) > max_line and not line.endswith(("\n", "\r")):
            raise error(f"{label}: line {n} is longer than {max_line:,} characters ({what})")
        if "\0" in line:
            raise error(f"{label}: line {n} holds NUL bytes ({what})")
        yield line


def read_lines(path: str | os.PathLike[str], label: str, *, what: str, max_line: int = MAX_PATH_LINE,
               max_entries: int = MAX_ENTRIES, fifo: bool = False, comments: bool = True,
               encoding: str = "utf-8-sig", error: ErrorType = UsageError) -> list[str]:
    """The stripped, non-blank lines of a list file (``#`` lines skipped when ``comments``), at
    most ``max_entries`` of them."""
    out: list[str] = []
    with open_list(path, label, fifo=fifo, encoding=encoding, error=error) as f:
        for line in bounded_lines(f, label, max_line=max_line, what=what, error=error):
            v = line.strip()
            if v and not (comments and v.startswith("#")):
                if len(out) >= max_entries:
                    raise error(f"{label}: more than {max_entries:,} entries ({what})")
                out.append(v)
    return out


def read_csv_rows(f: TextIO, label: str, *, what: str, dialect: str = "excel", max_row: int = MAX_CSV_ROW,
                  max_rows: int = MAX_ENTRIES, error: ErrorType = UsageError) -> Iterator[list[str]]:
    """The rows of an opened CSV file (``open_list``), header included, each line and field
    bounded by ``max_row`` characters, at most ``max_rows`` rows."""
    limit = csv.field_size_limit()
    reader = csv.reader(bounded_lines(f, label, max_line=max_row, what=what, error=error), dialect=dialect)
    n = 0
    while True:
        csv.field_size_limit(max_row)
        try:
            row = next(reader, None)
        except csv.Error as exc:
            raise error(f"{label}: not a CSV file ({what}): {exc}") from None
        finally:
            csv.field_size_limit(limit)
        if row is None:
            return
        n += 1
        if n > max_rows:
            raise error(f"{label}: more than {max_rows:,} rows ({what})")
        yield row
