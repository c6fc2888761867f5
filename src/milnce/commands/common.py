"""What every command module shares: the model options, the window options and ``CommandError``.

Commands parse arguments and call public library functions; ``milnce.cli`` imports the command
modules (never the reverse).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ..errors import MilnceError
from ..runoptions import FIELDS, RunOptions, resolve_run_options
from ..windows import WindowSettings, batch_default_text
from .vocabulary import add_index_option, deprecated_alias

if TYPE_CHECKING:  # pragma: no cover
    from ..api import MILNCE

__all__ = ["FAILURE_EXIT", "CommandError", "add_model_options", "model_from_args", "model_for_index", "add_window_options",
           "window_overrides", "window_settings", "run_options", "add_batch_option", "add_index_option",
           "deprecated_alias"]


# The --help epilog of the commands that read many videos (index, extract, embed-video, eval).
FAILURE_EXIT = ("Exit status: 0 when every video was read; 1 when the run finished but some videos could not be "
                "read, in this run or an earlier one and still failing (a video 'milnce index' skips because it "
                "failed before, until --retry-errors, counts too); each is listed once, with a one-line reason; "
                "2 for an error that stopped the run (one line).")


class CommandError(MilnceError):
    """An error to report to the user as one line, without a traceback."""


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """``--weights/--vocab/--device/--precision/--eager`` for commands that run the model."""
    g = parser.add_argument_group("model")
    g.add_argument("--weights", help="weights file (.pth, .safetensors, bundle or `milnce train` run folder) or registry name; "
                   "default: for search/serve/localize the weights the index records, else $MILNCE_WEIGHTS or the "
                   "published weights from the cache")
    g.add_argument("--vocab", help="vocabulary .npy (default: $MILNCE_VOCAB, next to the weights, or the cache)")
    g.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    g.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="video tower precision")
    g.add_argument("--eager", action="store_true", help="use the plain eager network instead of the fast path")
    g.add_argument("--no-download", action="store_true", help="never download weights; fail if they are not local")


def model_from_args(args: argparse.Namespace) -> MILNCE:
    """Load the model the ``add_model_options`` options name."""
    from ..api import load_model

    return load_model(
        args.weights,
        args.vocab,
        device=args.device,
        fast=not args.eager,
        precision=args.precision,
        download=not args.no_download,
    )


def model_for_index(args: argparse.Namespace, index: str | None,
                    load: Callable[[argparse.Namespace], MILNCE] = model_from_args) -> MILNCE:
    """The model for searching the index folder ``index``: ``--weights`` when given, else the
    weights the index records (``milnce.index.source``; one-line ``IndexModelError`` when they
    are gone or changed), else the default weights. ``load`` loads the options (``model_from_args``)."""
    if args.weights or index is None:
        return load(args)
    from ..index import recorded_weights

    rec = recorded_weights(index, getattr(args, "collection", None))
    if rec is None:
        return load(args)
    weights, vocab = rec.weights_vocab(args.vocab)
    model = load(argparse.Namespace(**{**vars(args), "weights": weights, "vocab": vocab}))
    rec.check(model)
    return model


def add_window_options(p: argparse.ArgumentParser, what: str, *, stride: bool = True, batch_size: bool = True) -> None:
    """``--fps/--num-frames/--size/--stride`` (default None: the model's or the index's) and
    ``--batch-size``."""
    d = WindowSettings()
    g = p.add_argument_group("windows", f"how videos are cut into windows ({what})")
    g.add_argument("--fps", type=float, default=None, help=f"frames per second sampled (default: the model's, {d.fps:g} for the published weights)")
    g.add_argument("--num-frames", type=int, default=None, help=f"frames per window (default: the model's, {d.num_frames} for the published weights)")
    g.add_argument("--size", type=int, default=None, help=f"frame size in pixels (default: the model's, {d.size} for the published weights)")
    if stride:
        g.add_argument("--stride", type=int, default=None,
                       help=f"frames between window starts (default: half the window, e.g. {d.stride} of "
                       f"{d.num_frames} frames = {d.hop:g} s at {d.fps:g} fps; at most the window unless --allow-gaps)")
        g.add_argument("--allow-gaps", action="store_true",
                       help="accept a --stride longer than the window: the frames between windows are in none")
    if batch_size:
        add_batch_option(g)


def add_batch_option(g: argparse._ActionsContainer, what: str = "windows per model call") -> None:
    """``--batch-size N`` of the commands that embed videos; default None: the pipeline's
    (``milnce.windows.DEFAULT_BATCH_CPU`` / ``DEFAULT_BATCH_CUDA``)."""
    g.add_argument("--batch-size", type=int, default=None, metavar="N",
                   help=f"{what} (default: {batch_default_text()})")


def window_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The window options given on the command line (None where left out)."""
    return {k: getattr(args, k, None) for k in ("fps", "num_frames", "size", "stride")}


def window_settings(args: argparse.Namespace, model: object = None) -> WindowSettings:
    """The window options over the model's conventions, validated (``UsageError`` on a bad value:
    call this before creating files or loading the model)."""
    batch_size = getattr(args, "batch_size", None)
    if batch_size is not None and batch_size < 1:
        raise CommandError(f"--batch-size must be >= 1, got {batch_size}")
    workers = getattr(args, "workers", None)
    if workers is not None and workers < 0:
        raise CommandError(f"--workers must be >= 0, got {workers}")
    return WindowSettings.for_model(model, allow_gaps=getattr(args, "allow_gaps", False), **window_overrides(args))


def run_options(args: argparse.Namespace, *, device: object = None, check: bool = False,
                env: Mapping[str, str] | None = None) -> RunOptions:
    """The run options of the command line (``--batch-size``, ``--workers``, ``--decode-threads``,
    ``--device``; left out: ``None``) resolved once over the environment (default ``os.environ``:
    torchrun's ``LOCAL_RANK``/``LOCAL_WORLD_SIZE``) by ``milnce.runoptions.resolve_run_options``.
    ``device``: the loaded model's device; ``check``: check ``--device`` on this machine."""
    cli = {k: getattr(args, k, None) for k in FIELDS}
    return resolve_run_options(cli, env=os.environ if env is None else env,
                               device=None if device is None else str(device), check=check,
                               names={"batch_size": "--batch-size", "workers": "--workers"})
