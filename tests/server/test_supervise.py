"""``milnce.server.supervise`` called directly: which exits end the supervisor, which restart the
server, when it gives up, and what ``serve --restart`` hands it."""

from __future__ import annotations

import logging
import signal
import sys

import pytest

pytest.importorskip("fastapi")

from milnce.cli import build_parser, main  # noqa: E402
from milnce.server import supervise as sup  # noqa: E402


def test_constants_the_command_keeps_for_its_help_agree():
    from milnce.commands import serve as cmd
    from milnce.server.deps import MISSING_DEPS

    assert cmd.MAX_RESTARTS == sup.MAX_RESTARTS and cmd.MISSING_DEPS == MISSING_DEPS


def test_death_cause_in_words():
    assert sup.death_cause(-signal.SIGBUS) == "signal SIGBUS"
    assert sup.death_cause(3) == "exit status 3"
    assert sup.death_cause(-1000) == "signal 1000"  # no such signal: its number


@pytest.mark.parametrize(("rc", "want"), [(0, 0), (2, 2), (130, 0), (-signal.SIGINT, 0), (-signal.SIGTERM, 0)])
def test_exits_that_end_the_supervisor(rc, want, monkeypatch):
    runs = []
    monkeypatch.setattr(sup, "_run_child", lambda command, grace_s: runs.append(command) or (rc, False))
    assert sup.supervise(["x"], pause_s=0.0) == want and runs == [["x"]]


def test_told_to_stop_is_success_whatever_the_child_said(monkeypatch):
    monkeypatch.setattr(sup, "_run_child", lambda command, grace_s: (-signal.SIGKILL, True))
    assert sup.supervise(["x"], pause_s=0.0) == 0


def test_restarts_until_too_many_deaths_within_the_window(monkeypatch, caplog):
    statuses = iter([-signal.SIGBUS, 1, -signal.SIGSEGV])
    monkeypatch.setattr(sup, "_run_child", lambda command, grace_s: (next(statuses), False))
    with caplog.at_level(logging.WARNING, logger="milnce.server"):
        assert sup.supervise(["x"], max_restarts=2, pause_s=0.0) == 1
    lines = [r.getMessage() for r in caplog.records if r.name == "milnce.server"]
    assert lines == ["serve: the server died (signal SIGBUS); restarting it",
                     "serve: the server died (exit status 1); restarting it",
                     "serve: the server died (signal SIGSEGV) 3 times within 60 s; giving up"]


def test_deaths_outside_the_window_do_not_count(monkeypatch):
    statuses = iter([-signal.SIGBUS] * 4 + [0])
    monkeypatch.setattr(sup, "_run_child", lambda command, grace_s: (next(statuses), False))
    # a window shorter than any time between deaths: each death is the only one in it
    assert sup.supervise(["x"], max_restarts=1, window_s=1e-9, pause_s=0.001) == 0


def test_a_real_child_that_exits_2_ends_it():
    assert sup.supervise([sys.executable, "-c", "raise SystemExit(2)"], pause_s=0.0) == 2


def test_serve_restart_hands_the_same_command_line_to_the_supervisor(tmp_path, monkeypatch, capsys):
    from milnce.index.layout import DB_NAME

    index = tmp_path / "ix"
    index.mkdir()
    (index / DB_NAME).write_bytes(b"")  # only its presence is read before the child starts
    got = []
    monkeypatch.setattr(sup, "supervise", lambda command, **kw: got.append((command, kw)) or 0)
    assert main(["serve", "--index", str(index), "--restart", "--port", "0", "--clip-max-files", "2"]) == 0
    (command, kw), = got
    assert command[:3] == [sys.executable, "-m", "milnce.cli"] and kw == {"max_restarts": sup.MAX_RESTARTS}
    again = build_parser().parse_args(command[3:])
    assert not again.restart and again.index == [str(index)] and again.clip_max_files == 2 and again.port == 0


def test_serve_restart_refuses_a_folder_that_is_no_index_before_starting(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sup, "supervise", lambda command, **kw: pytest.fail("started"))
    assert main(["serve", "--index", str(tmp_path), "--restart"]) == 2
    assert "neither an index folder nor a folder of index folders" in capsys.readouterr().err
