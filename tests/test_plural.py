"""``milnce.plural``: Counts in messages."""

from __future__ import annotations

from milnce.plural import plural


def test_plural():
    assert (plural(0, "row"), plural(1, "row"), plural(2, "row")) == ("0 rows", "1 row", "2 rows")
    assert plural(1, "query", "queries") == "1 query" and plural(3, "query", "queries") == "3 queries"
    assert plural(1234, "video", thousands=True) == "1,234 videos"
