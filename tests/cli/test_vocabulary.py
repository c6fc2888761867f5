""" end to end (``milnce.commands.vocabulary``): the CLI run through ``main(argv)`` or a subprocess."""

from __future__ import annotations

import pytest

from milnce.cli import _setup_logging, build_parser, main


@pytest.mark.parametrize("argv", [["search", "--like", "v.mp4"], ["remove", "a.mp4"], ["clip", "3@1-2"], ["serve"],
                                  ["clip", "IDX", "3@1-2", "--index", "OTHER"]])
def test_the_index_folder_is_required(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(argv)
    assert exc.value.code == 2
    assert "--index" in capsys.readouterr().err.splitlines()[-1]


def test_a_deprecated_spelling_through_the_cli_is_one_warning_line(tmp_path, capsys):
    """``milnce search OLD-FORM``: the warning line, then the command runs (here: no such index)."""
    assert main(["search", str(tmp_path / "nope"), "red", "--no-download"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "milnce: warning: the index folder as a positional argument is deprecated in search, use --index DIR"
    assert err[1].startswith("milnce: error:") and len(err) == 2


def test_serve_restart_child_gets_the_new_spelling(capsys):
    from milnce.commands.serve import _child_argv

    _setup_logging()
    args = build_parser().parse_args(["serve", "--index", "A", "--index", "B", "--restart", "--port", "0"])
    again = build_parser().parse_args(_child_argv(args))
    assert again.index == ["A", "B"] and not again.restart
    assert capsys.readouterr().err == ""  # no deprecation warning in the child
