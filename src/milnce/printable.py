"""Text that can always be printed, whatever a file name (or a name inside a data file) holds.

``show_path``: bytes that are not UTF-8 (surrogate-escaped by the OS layer) become ``\\xNN``, and
so do control characters such as ESC or a newline, so that a hostile name can neither rewrite the
terminal nor forge a line of output (a "failed: ..." row, a log line). ``show_lines``: the same for
each line of a message whose own line breaks are wanted.
"""

from __future__ import annotations

__all__ = ["show_path", "show_lines", "show_ids", "show_reasons"]


def show_path(path: str) -> str:
    """A path as text that can always be printed (bytes that are not UTF-8 as ``\\xNN``; control
    characters such as ESC or a newline as ``\\xNN`` too, so a file name cannot rewrite a terminal
    or forge a line of output)."""
    text = str(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        text = "".join(f"\\x{ord(c):02x}" if ord(c) < 32 or ord(c) == 127 else c for c in text)
    return text


def show_lines(text: str) -> str:
    """``text`` with its own line breaks kept and everything else made printable (``show_path``)."""
    return "\n".join(show_path(line) for line in str(text).split("\n"))


def show_ids(ids: list[str], n: int = 8) -> str:
    """The first ``n`` of ``ids``, comma-separated and printable, with how many more."""
    return ", ".join(show_path(i) for i in ids[:n]) + (f", ... (+{len(ids) - n})" if len(ids) > n else "")


def show_reasons(items: list[tuple[str, str]], n: int = 5) -> str:
    """``name: why; ...`` of the first ``n`` items, printable."""
    return "; ".join(f"{show_path(k)}: {show_path(v)}" for k, v in items[:n]) + (" ..." if len(items) > n else "")
