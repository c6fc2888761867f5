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
import logging
import sys
from collections.abc import Sequence
from importlib import import_module

from .commands.common import CommandError, add_model_options, model_from_args
from .errors import MilnceError

__all__ = ["main", "add_model_options", "model_from_args", "CommandError"]

COMMAND_MODULES = ("milnce.commands.model", "milnce.commands.video", "milnce.commands.search", "milnce.commands.clip",
                   "milnce.commands.serve",
                   "milnce.commands.export", "milnce.commands.eval",
                   "milnce.commands.train", "milnce.commands.extract", "milnce.commands.recipes")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
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


class _StderrHandler(logging.Handler):
    """Library messages (``milnce.*`` loggers) as ``milnce: message`` lines on the current stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(f"milnce: {record.getMessage()}\n")
        except Exception:  # noqa: BLE001
            self.handleError(record)


def _setup_logging() -> None:
    log = logging.getLogger("milnce")
    if not any(isinstance(h, _StderrHandler) for h in log.handlers):
        log.addHandler(_StderrHandler(logging.INFO))
    if log.level == logging.NOTSET:
        log.setLevel(logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    _setup_logging()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("milnce: interrupted", file=sys.stderr)
        return 130
    except MilnceError as exc:
        print(f"milnce: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as exc:
        # a path the user named (weights, videos, folders) that is missing or not readable
        print(f"milnce: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
