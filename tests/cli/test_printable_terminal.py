"""Names reaching a terminal are printable (issue 25 item 11): the CLI's error line, library log
lines and progress bars show a newline, ESC or a byte that is not UTF-8 as ``\\xNN``."""

from __future__ import annotations

import logging
import os

from milnce.cli import main
from milnce.index.ingest import Progress

EVIL = "a\nmilnce: error: forged\x1b[2J"


def test_error_line_is_one_line_whatever_the_name(tmp_path, capsys):
    for name in (EVIL, os.fsdecode(b"bad\xff\xfename")):
        assert main(["search", "--index", str(tmp_path / name), "words"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("milnce: error:") and "\x1b" not in err
        assert err.encode("utf-8", "strict")  # no raw byte that is not UTF-8


def test_error_line_escapes_raw_bytes(tmp_path, capsys):
    assert main(["search", "--index", str(tmp_path / os.fsdecode(b"bad\xff")), "words"]) == 2
    err = capsys.readouterr().err
    assert "bad\\xff" in err and err.encode("utf-8", "strict")


def test_log_arguments_cannot_forge_lines():
    from milnce.cli import _printable_message

    rec = logging.LogRecord("milnce.index", logging.WARNING, __file__, 1, "the ANN index %s is %s", (EVIL, "damaged"),
                            None)
    text = _printable_message(rec)
    assert "\n" not in text and "\x1b" not in text and "\\x0amilnce: error: forged\\x1b[2J" in text
    two = logging.LogRecord("milnce", logging.INFO, __file__, 1, "first line\nsecond %d", (2,), None)
    assert _printable_message(two) == "first line\nsecond 2"


def test_progress_bar_postfix_is_printable(capsys):
    bar = Progress(2, 7200.0)
    bar.done(3600.0, f"/x/{EVIL}.npz")
    bar.bar.refresh()
    bar.close()
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\nmilnce: error" not in err and "\\x0amilnce" in err
