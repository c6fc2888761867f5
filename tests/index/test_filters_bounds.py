"""Filter times and the negative weight are bounded: one-line errors, never an overflow deep in a
search (issue 25 item 14)."""

from __future__ import annotations

import pytest

from milnce.cli import main
from milnce.errors import UsageError
from milnce.index.filters import FilterError, VideoFilter, parse_when
from milnce.index.negatives import MAX_NOT_WEIGHT, check_weight


@pytest.mark.parametrize("text", ["99999999999999", "-99999999999999", "1e300", "0001-01-01"])
def test_when_out_of_range(text):
    with pytest.raises(FilterError, match="out of range|not a date"):
        parse_when(text)


def test_when_in_range_describes():
    t = parse_when("2024-05-01")
    assert "2024-05-01" in VideoFilter(mtime_min=t).describe()
    assert parse_when("9999-12-01") > 0


def test_not_weight_bounded():
    assert check_weight(MAX_NOT_WEIGHT) == MAX_NOT_WEIGHT
    for bad in (1e39, -1, float("nan"), "x"):
        with pytest.raises(UsageError, match="from 0 to 1e\\+06"):
            check_weight(bad)


@pytest.mark.parametrize("argv, words", [
    (["--after", "99999999999999"], "out of range"),
    (["--not", "dog", "--not-weight", "1e39"], "from 0 to"),
])
def test_cli_one_line(tmp_path, capsys, argv, words):
    assert main(["search", "--index", str(tmp_path / "ix"), "cut tomato", *argv]) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1 and "Traceback" not in err
