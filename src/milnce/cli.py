"""The ``milnce`` command line. ``main(argv)`` is testable in-process.

Each group of commands lives in ``milnce.commands.<name>`` with a ``register(subparsers)``
function (shared options: ``milnce.commands.common``); this module builds the parser and turns
``MilnceError`` into a one-line message and an exit code (README, "Exit codes"):

    0 success · 1 finished, but some inputs failed · 2 error (bad arguments, input, weights,
    index) · 130 interrupted

Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import select
import sys
import warnings
from collections.abc import Iterator, Sequence
from importlib import import_module
from typing import TextIO

from .commands.common import CommandError, add_model_options, model_from_args
from .commands.vocabulary import MilnceParser
from .errors import MilnceError
from .printable import show_lines, show_path

__all__ = ["main", "add_model_options", "model_from_args", "CommandError"]

COMMAND_MODULES = ("milnce.commands.model", "milnce.commands.video", "milnce.commands.search", "milnce.commands.demo",
                   "milnce.commands.clip",
                   "milnce.commands.serve",
                   "milnce.commands.export", "milnce.commands.eval",
                   "milnce.commands.train", "milnce.commands.extract", "milnce.commands.recipes",
                   "milnce.commands.migrate")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = MilnceParser(
        prog="milnce",
        description="Search videos with words using the S3D text-video model trained on HowTo100M "
        "with MIL-NCE (Miech et al., CVPR 2020).",
        epilog="Run 'milnce COMMAND --help' for the options of a command. Weights are cached in "
        "$MILNCE_HOME (default ~/.cache/milnce); offline, give the model commands --weights and --vocab "
        "(or set MILNCE_WEIGHTS and MILNCE_VOCAB).",
    )
    parser.add_argument("--version", action="version", version=f"milnce {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # that feature is not installed in this build
                continue
            raise
        module.register(sub)
    return parser


def _printable_message(record: logging.LogRecord) -> str:
    """A log record's text for a terminal: its arguments (names, reasons) each on one printable line
    (``show_path``: a newline in a file name cannot start a forged ``milnce: error:`` line), the
    message's own line breaks kept (``show_lines``)."""
    args = record.args
    if isinstance(args, tuple) and args:
        try:
            text = str(record.msg) % tuple(a if isinstance(a, (int, float)) else show_path(str(a)) for a in args)
        except (TypeError, ValueError):
            text = record.getMessage()
    else:
        text = record.getMessage()
    return show_lines(text)


class _StderrHandler(logging.Handler):
    """Library messages (``milnce.*`` loggers) as ``milnce: message`` lines on the current stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(f"milnce: {_printable_message(record)}\n")
        except Exception:  # noqa: BLE001
            self.handleError(record)


def _setup_logging() -> None:
    log = logging.getLogger("milnce")
    if not any(isinstance(h, _StderrHandler) for h in log.handlers):
        log.addHandler(_StderrHandler(logging.INFO))
    if log.level == logging.NOTSET:
        log.setLevel(logging.INFO)


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: TextIO | None = None, line: str | None = None) -> None:
    """Python warnings as ``milnce: warning: ...`` lines (no source file, no code line)."""
    logging.getLogger("milnce").warning("warning: %s", message)


@contextlib.contextmanager
def _warnings_as_lines() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        yield


def _stdout_closed() -> bool:
    """Whether the reader of our stdout is gone (poll reports an error on a pipe without reader)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll (Windows), no file descriptor: assume so
        return True


def _quiet_broken_pipe() -> int:
    """The reader of our stdout went away (``milnce search ... | head -n 1``): stop quietly, and point
    stdout at /dev/null so that the interpreter's last flush raises nothing either."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return 141  # 128 + SIGPIPE, what a shell reports for a program ended by a closed pipe


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    _setup_logging()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        with _warnings_as_lines():
            code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        return code
    except BrokenPipeError:
        if not _stdout_closed():
            raise  # another pipe (a worker's, a socket): a bug, not the reader of our output going away
        return _quiet_broken_pipe()
    except KeyboardInterrupt:
        print("milnce: interrupted", file=sys.stderr)
        return 130
    except MilnceError as exc:
        print(f"milnce: error: {show_path(str(exc))}", file=sys.stderr)  # one line: a newline shows as \x0a
        return exc.exit_code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
