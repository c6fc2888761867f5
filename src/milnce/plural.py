"""Counts in messages: ``plural(1, "row")`` is "1 row", ``plural(2, "row")`` "2 rows"."""

from __future__ import annotations

__all__ = ["plural"]


def plural(n: int, noun: str, nouns: str | None = None, *, thousands: bool = False) -> str:
    """``n`` and the noun in the number it takes (``nouns``: the plural when it is not noun + "s";
    ``thousands``: 1,000 separators)."""
    count = f"{n:,}" if thousands else str(n)
    return f"{count} {noun if n == 1 else nouns or noun + 's'}"
