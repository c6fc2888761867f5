"""``milnce.timespec``: Times and video references typed by a user."""

from __future__ import annotations

import pytest

from milnce.errors import UsageError
from milnce.timespec import TimeSpecError, parse_like, parse_like_id, parse_span, parse_time


@pytest.mark.parametrize("text, seconds", [
    ("65", 65.0), ("80.5", 80.5), (".5", 0.5), ("1:05", 65.0), ("0:59.5", 59.5), ("1:02:03.5", 3723.5),
    (" 7 ", 7.0), ("120:00", 7200.0),
])
def test_times_accepted(text, seconds):
    assert parse_time(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", [
    "1_0", "²", "\u0661\u0662", "１２", "0:99", "1:60:00", "1:00:60", "1.5:30", "inf", "nan", "1e3", "-5",
    "", ":", "1:", "1:2:3:4", "+5", "0x10", "9" * 40,
])
def test_times_refused(text):
    with pytest.raises(TimeSpecError) as ei:
        parse_time(text)
    assert isinstance(ei.value, UsageError) and "\n" not in str(ei.value)


def test_spans_and_likes():
    no_file = lambda p: False  # noqa: E731
    assert parse_span("12@1:05-1:20", exists=no_file) == (12, 65.0, 80.0)
    assert parse_span("a@b.mp4@65-80.5", exists=no_file) == ("a@b.mp4", 65.0, 80.5)
    assert parse_span("²@1-2", exists=no_file) == ("²", 1.0, 2.0)  # not an id: a (missing) path
    assert parse_like("3@1:05", exists=no_file) == (3, 65.0)
    assert parse_like("²@1", exists=no_file) == ("²", 1.0)
    assert parse_like("x@y.mp4", exists=lambda p: p == "x@y.mp4") == ("x@y.mp4", 0.0)
    for bad in ("2@1_0-3", "2@0:99-1:00", "2@\u0661-3", "2@1", "@1-2"):
        with pytest.raises(TimeSpecError):
            parse_span(bad, exists=no_file)
    with pytest.raises(TimeSpecError):
        parse_like("2@1_0", exists=no_file)
    assert parse_like_id(" 7@12.5 ") == (7, 12.5) and parse_like_id("7") == (7, 0.0)
    for bad in ("²@1", "7@1:05", "7@1_0", "\u0667@1", "7@", "x", "1" * 19):
        with pytest.raises(TimeSpecError):
            parse_like_id(bad)
