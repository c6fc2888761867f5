"""``milnce.cli``: The ``milnce`` command line."""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from milnce import cli
from milnce.cli import main
from milnce.errors import UsageError


def _commands() -> dict[str, argparse.ArgumentParser]:
    (sub,) = [a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def test_help_texts_print_single_percent_signs():
    """``search --help`` said "within 10%% of" (argparse formats a description only with %(prog))."""
    helps = {name: p.format_help() for name, p in _commands().items()}
    assert "within 10% of (peak - median)" in " ".join(helps["search"].split())
    assert not [name for name, text in helps.items() if "%%" in text]

ROOT = Path(__file__).resolve().parents[1]


def _args(ckpt) -> list[str]:
    return ["--weights", str(ckpt[0]), "--vocab", str(ckpt[1]), "--no-download"]


def test_cli_leaves_plain_os_errors_as_bugs(monkeypatch, capsys):
    import milnce.commands.model as cmds

    def bug(args):
        raise FileNotFoundError("a bug, not a user error")

    monkeypatch.setattr(cmds, "cmd_info", bug)
    with pytest.raises(FileNotFoundError):
        main(["info"])


@pytest.mark.slow
def test_broken_pipe_is_quiet(tmp_path):
    """``milnce info | head -n 0``: the reader is gone before milnce writes; no traceback."""
    env = {**os.environ, "MILNCE_HOME": str(tmp_path), "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "milnce", "info"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # like `head` exiting: every write of milnce now fails with EPIPE
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141
    assert err == "", err


def test_warnings_become_milnce_lines(checkpoint, capsys):
    assert main(["embed-text", "qwertyuiop", *_args(checkpoint)]) == 0
    err = capsys.readouterr().err
    assert "no word in the vocabulary" in err
    assert all(line.startswith("milnce: ") for line in err.strip().splitlines()), err
    assert ".py:" not in err  # no source file, no code line


def test_other_broken_pipes_stay_bugs(monkeypatch):
    import milnce.commands.model as cmds

    def bug(args):
        raise BrokenPipeError("a worker's pipe")

    monkeypatch.setattr(cmds, "cmd_info", bug)
    monkeypatch.setattr("milnce.cli._stdout_closed", lambda: False)
    with pytest.raises(BrokenPipeError):
        main(["info"])


def test_cli_reports_milnce_errors_in_one_line_and_bugs_with_a_traceback(monkeypatch, capsys):
    import milnce.commands.model as cmds

    def user_error(args):
        raise UsageError("bad option")

    monkeypatch.setattr(cmds, "cmd_info", user_error)
    assert main(["info"]) == 2
    assert capsys.readouterr().err == "milnce: error: bad option\n"

    def bug(args):
        raise ValueError("a bug")

    monkeypatch.setattr(cmds, "cmd_info", bug)
    with pytest.raises(ValueError, match="a bug"):
        main(["info"])

EVIL = "a\nmilnce: error: forged\x1b[2J"


def test_log_arguments_cannot_forge_lines():
    from milnce.cli import _printable_message

    rec = logging.LogRecord("milnce.index", logging.WARNING, __file__, 1, "the ANN index %s is %s", (EVIL, "damaged"),
                            None)
    text = _printable_message(rec)
    assert "\n" not in text and "\x1b" not in text and "\\x0amilnce: error: forged\\x1b[2J" in text
    two = logging.LogRecord("milnce", logging.INFO, __file__, 1, "first line\nsecond %d", (2,), None)
    assert _printable_message(two) == "first line\nsecond 2"


def test_cli_help(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for cmd in ("download", "info", "embed-text", "convert"):
        assert cmd in out
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
