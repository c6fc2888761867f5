"""``milnce.commands.search_output``: How ``milnce search`` reads its queries and writes its results."""

from __future__ import annotations

from milnce.commands.search_output import SearchOutput


def test_search_table_says_only_1_result(capsys):
    out = SearchOutput("table", False, offset=1)
    out.k, out.fewer_note = 10, "within the filter"
    out.add("red", None, [])
    assert "(only 1 result within the filter)" in capsys.readouterr().out


def test_csv_failure_count_agrees(capsys):
    out = SearchOutput("csv", False)
    out.add("qwerty", "no known word", [])
    out.finish()
    assert "1 of 1 query failed and has no rows" in capsys.readouterr().err
