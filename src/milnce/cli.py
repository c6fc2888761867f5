"""The ``milnce`` command line. ``main(argv)`` is testable in-process.

Each group of commands lives in ``milnce.commands.<name>`` with a ``register(subparsers)``
function; this module only holds the shared options and the error handling.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib import import_module

__all__ = ["main", "add_model_options", "model_from_args", "CommandError"]

COMMAND_MODULES = ("milnce.commands.model", "milnce.commands.video", "milnce.commands.search", "milnce.commands.serve",
                   "milnce.commands.extract")


class CommandError(Exception):
    """An error to report to the user as one line, without a traceback."""


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """``--weights/--vocab/--device/--precision/--eager`` for commands that run the model."""
    g = parser.add_argument_group("model")
    g.add_argument("--weights", help="weights file (.pth, .safetensors, bundle folder) or registry name; "
                   "default: $MILNCE_WEIGHTS or the published weights from the cache")
    g.add_argument("--vocab", help="vocabulary .npy (default: $MILNCE_VOCAB, next to the weights, or the cache)")
    g.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    g.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="video tower precision")
    g.add_argument("--eager", action="store_true", help="use the plain eager network instead of the fast path")
    g.add_argument("--no-download", action="store_true", help="never download weights; fail if they are not local")


def model_from_args(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from .api import load_model

    return load_model(
        args.weights,
        args.vocab,
        device=args.device,
        fast=not args.eager,
        precision=args.precision,
        download=not args.no_download,
    )


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="milnce",
        description="Search videos with words using the S3D text-video model trained on HowTo100M "
        "with MIL-NCE (Miech et al., CVPR 2020).",
        epilog="Run 'milnce COMMAND --help' for the options of a command. Weights are cached in "
        "$MILNCE_HOME (default ~/.cache/milnce); offline, pass --weights and --vocab.",
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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    from .download import DownloadError
    from .text import VocabularyError
    from .weights import CheckpointError

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
    except (CommandError, CheckpointError, VocabularyError, DownloadError, FileNotFoundError, IsADirectoryError,
            NotADirectoryError, PermissionError, ValueError) as exc:
        print(f"milnce: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
