"""One vocabulary of options across commands: what each option name means, the index folder
option, and the old spellings that still work with a one-line deprecation warning.

Rules (``tests/commands/test_vocabulary.py`` walks every subparser and enforces them):

* an option name means one thing in every command (``MEANINGS``), takes a value in all of them or
  in none, and values of one kind (a number, or text);
* metavars are upper-case (``DIR``, ``FILE``, ``N``); a set of choices is shown as ``{a,b}``;
* the index folder is ``--index DIR`` in every command that reads or writes one;
* a command that loads the model takes ``--weights``;
* an old spelling is a hidden alias (``deprecated_alias``) that prints
  ``milnce: warning: OLD is deprecated in COMMAND, use NEW`` and then acts as NEW.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ..printable import show_path

__all__ = ["MEANINGS", "MilnceParser", "deprecated_alias", "add_index_option", "add_collection_option", "warn_deprecated"]

log = logging.getLogger("milnce.cli")

# Option name -> its one meaning (the commands' help texts say it in their own words).
MEANINGS: dict[str, str] = {
    "--allow-gaps": "accept a stride longer than the window (frames between windows are in none)",
    "--clip-send-timeout": "seconds a finished clip waits for its client before it is dropped",
    "--clip-max-mb": "megabytes of clips the server holds on disk at once",
    "--upload-max-mb": "the largest clip upload the server accepts, in megabytes (MiB)",
    "--upload-max-seconds": "the longest span of an uploaded clip the server embeds, in seconds",
    "--upload-timeout": "seconds the server spends embedding one uploaded clip before answering 504",
    "--clip-max-files": "clips the server holds on disk at once (cut or waiting to be sent)",
    "--no-fallback": "fail instead of training the small fallback model when the published weights cannot be had",
    "--from": "a copy of the weights or word list you already have (file, folder or URL), checked like a download",
    "--adam-eps": "Adam epsilon",
    "--after": "only videos modified at or after a time",
    "--ann": "build the approximate-nearest-neighbour index (kind)",
    "--ann-min-windows": "windows from which the ANN index is built",
    "--annotations": "an evaluation's annotation file or folder",
    "--bad-fraction": "share of unreadable training samples that stops training",
    "--bad-window": "steps over which --bad-fraction is judged",
    "--batch-size": "items per model step (windows per model call; training clips per optimiser step)",
    "--before": "only videos modified before a time",
    "--cache": "embedding cache folder",
    "--check": "only report how complete an output folder is",
    "--check-outputs": "run the written files on random inputs and compare them with PyTorch",
    "--config": "settings file",
    "--copy": "stream copy instead of re-encoding",
    "--crop": "how frames are cropped to the square input",
    "--csv": "print CSV",
    "--data": "training data",
    "--decode-size": "decode size before the random crop",
    "--decode-threads": "decoder threads per video",
    "--device": "torch device",
    "--eager": "plain eager network instead of the fast path",
    "--end": "end time in seconds",
    "--eval-every": "held-out retrieval every N steps",
    "--eval-max": "held-out pairs used",
    "--exact": "exact search even if an ANN index exists",
    "--features": "which features to write (comma-separated names)",
    "--format": "format of what the command writes (printed results, or the dataset on disk)",
    "--fps": "frames per second (sampled, or of generated videos)",
    "--freeze-bn": "BatchNorm in eval mode",
    "--from-features": "index extracted feature files instead of videos",
    "--grad-accum": "micro-steps per optimiser step",
    "--grad-clip": "gradient norm clip",
    "--head-lr-mult": "learning-rate factor of the projection heads",
    "--hflip": "random horizontal flips",
    "--host": "address to listen on",
    "--ids": "a file of video ids",
    "--index": "the index: a folder, or a Milvus collection (a .db file for Milvus Lite, or http(s)://host:port)",
    "--collection": "the Milvus collection name of a Milvus --index (default milnce)",
    "--to": "where a command copies to",
    "--batch-windows": "windows per write",
    "--json": "print JSON",
    "--keep-checkpoints": "checkpoints kept",
    "--like": "query by example: a window of an indexed video",
    "--like-file": "query by example: a video file (a span of it) or a still image, embedded with the index's settings",
    "--limit": "only the first N rows",
    "--list-videos": "rank whole videos (by their best moment)",
    "--log-every": "metrics line every N steps",
    "--log-level": "server log level",
    "--lr": "peak learning rate",
    "--max-duration": "only videos at most this long",
    "--max-words": "words per caption",
    "--micro-batch": "gradient caching: clips per forward pass",
    "--min-duration": "only videos at least this long",
    "--min-lr": "final learning rate",
    "--min-time": "shortest caption span",
    "--mode": "what a search scores: the pictures (visual), the subtitles (speech) or both (hybrid)",
    "--mixed-5c": "also write the 1024-d mixed_5c features",
    "--no-access-log": "do not log each request",
    "--no-cache": "neither read nor write the embedding cache",
    "--no-download": "never download weights",
    "--no-merge": "single windows instead of moments",
    "--no-recursive": "do not descend into sub-folders",
    "--not": "a sentence the results should not match",
    "--not-weight": "weight of the --not terms",
    "--num-candidates": "captions per clip in the positive bag",
    "--num-frames": "frames per window (or clip)",
    "--num-val-videos": "number of held-out videos to generate",
    "--num-videos": "number of training videos to generate",
    "--num-windows": "windows per clip",
    "--offset": "skip the first N results",
    "--onnx": "output prefix of the ONNX files",
    "--opset": "ONNX opset",
    "--out": "where the command writes its output (a file or a folder, as its help says)",
    "--overwrite": "replace (or redo) existing outputs",
    "--pad": "how the last partial window is filled",
    "--padding": "seconds added on both sides of a span",
    "--path-glob": "only videos whose path matches a glob",
    "--plot": "write a plot (PNG)",
    "--port": "port to listen on",
    "--precision": "numeric precision of the model",
    "--prune": "drop indexed videos whose file no longer exists",
    "--queries-file": "a file of queries, one a line",
    "--query": "a query sentence (repeatable)",
    "--quiet": "no progress bar",
    "--recipe": "a downstream model's feature recipe",
    "--restart": "restart the server when it dies",
    "--resume": "continue from the latest checkpoint",
    "--retry-errors": "try again the videos that failed before",
    "--root": "a collection root",
    "--save-every": "checkpoint every N steps",
    "--schedule-steps": "cosine horizon",
    "--seed": "random seed",
    "--shard": "take one share of the inputs",
    "--shard-size": "videos per output shard",
    "--size": "frame side in pixels",
    "--space-to-depth": "S3D input stem",
    "--speech-weight": "weight of the speech score in a hybrid search",
    "--split": "split name in the output file names",
    "--start": "start time in seconds",
    "--steps": "optimiser steps",
    "--stride": "frames between window starts",
    "--subtitle-langs": "which subtitle languages are indexed",
    "--sync-bn": "synchronise BatchNorm statistics across processes",
    "--text": "sentences",
    "--text-only": "only the text tower",
    "--threads": "CPU threads per process",
    "--ties": "rank of a correct clip tied with others",
    "--train-word-embd": "also train the word embedding",
    "--under": "only videos inside a folder",
    "--val": "held-out CSV",
    "--verify-files": "read every finished output file's members (CRC) and redo the damaged ones",
    "--video-embeddings": "saved video embedding files",
    "--video-only": "only the video tower",
    "--videos": "a folder of videos",
    "--videos-per-shard": "videos per dataset shard",
    "--vocab": "vocabulary .npy",
    "--warmup-steps": "linear warm-up steps",
    "--weight-decay": "Adam weight decay",
    "--weights": "the model's weights (file, bundle, run folder or registry name)",
    "--word2vec": "word vectors for the word embedding",
    "--workers": "worker processes reading the videos (decoders or data loaders)",
    "-k": "how many results",
}


def warn_deprecated(message: str) -> None:
    """``milnce: warning: MESSAGE`` on stderr (through the ``milnce`` loggers)."""
    log.warning("warning: %s", message)


def _command(parser: argparse.ArgumentParser) -> str:
    return parser.prog.split(" ", 1)[-1]


class _DeprecatedAlias(argparse.Action):
    """A hidden old spelling of ``target``: warns, then acts as ``target``."""

    def __init__(self, option_strings: Sequence[str], dest: str, *, target: argparse.Action, command: str,
                 **kwargs: Any) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.target, self.command = target, command

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        warn_deprecated(f"{option_string} is deprecated in {self.command}, use {self.target.option_strings[0]}")
        self.target(parser, namespace, values, self.target.option_strings[0])


def deprecated_alias(parser: argparse.ArgumentParser, target: argparse.Action, *old: str) -> None:
    """Keep ``old`` spellings of ``target`` working (hidden from the help) with a deprecation warning."""
    kwargs: dict[str, Any] = {"nargs": target.nargs, "choices": target.choices, "metavar": target.metavar}
    if target.type is not None:
        kwargs["type"] = target.type
    parser.add_argument(*old, action=_DeprecatedAlias, target=target, command=_command(parser), dest=target.dest,
                        default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kwargs)


PostParse = Callable[[argparse.ArgumentParser, argparse.Namespace], None]


class MilnceParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` that runs its ``post_parse`` hooks (old positional forms) after parsing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.post_parse: list[PostParse] = []
        self.shown_required: list[argparse.Action] = []  # required, checked by a post_parse hook

    @contextlib.contextmanager
    def _required_shown(self) -> Iterator[None]:
        for action in self.shown_required:
            action.required = True
        try:
            yield
        finally:
            for action in self.shown_required:
                action.required = False

    def format_usage(self) -> str:
        with self._required_shown():
            return super().format_usage()

    def format_help(self) -> str:
        with self._required_shown():
            return super().format_help()

    def parse_known_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                         namespace: argparse.Namespace | None = None) -> tuple[argparse.Namespace, list[str]]:
        ns, extras = super().parse_known_args(args, namespace)
        for hook in self.post_parse:
            hook(self, ns)
        return ns, extras


def add_collection_option(parser: argparse.ArgumentParser) -> argparse.Action:
    """``--collection NAME``: which collection of a Milvus ``--index`` (``milnce.index.backends``)."""
    return parser.add_argument("--collection", metavar="NAME", default=None,
                               help="collection of a Milvus --index (a .db file or http(s)://host:port; the token "
                                    "comes from $MILNCE_MILVUS_TOKEN); default: milnce")


def add_index_option(parser: argparse.ArgumentParser, help: str, *, required: bool = False, many: bool = False,
                     legacy: str | None = None, keep: int = 0) -> argparse.Action:
    """``--index DIR`` (``many``: repeatable, a list).

    ``legacy`` keeps the old positional form working (with a deprecation warning) when ``--index`` is
    not given: ``"*"``: hidden positionals of their own are the index folders (``serve DIR...``);
    the name of a list positional: its first value is the index folder if more than ``keep`` values
    are left after it (``search DIR QUERY...``, ``remove DIR PATH...``); the name of a single
    positional: with a second (hidden) value, the first was the index folder (``clip DIR SPAN``)."""
    action = parser.add_argument("--index", metavar="DIR", action="append" if many else "store",
                                 required=required and legacy is None,
                                 help=help + (" (required)" if required else "") + ("; repeatable" if many else ""))
    if legacy is None:
        return action
    if not isinstance(parser, MilnceParser):  # pragma: no cover - parsers are built by milnce.cli
        raise TypeError("add_index_option(legacy=...) needs a MilnceParser")
    single = any(a.dest == legacy and not a.option_strings and a.nargs is None for a in parser._actions)
    hidden = "legacy_index" if legacy == "*" else f"legacy_{legacy}" if single else None
    if hidden is not None:
        parser.add_argument(hidden, nargs="*" if legacy == "*" else "?", help=argparse.SUPPRESS)
    command = _command(parser)

    def hook(p: argparse.ArgumentParser, ns: argparse.Namespace) -> None:
        old: list[str] = []
        extra = getattr(ns, hidden, None) if hidden else None
        if hidden:
            delattr(ns, hidden)
        if legacy == "*":
            old = list(extra or [])
        elif single:
            if extra is not None:
                old = [getattr(ns, legacy)]
                setattr(ns, legacy, extra)
        elif ns.index is None and len(getattr(ns, legacy) or []) > keep:
            old = [getattr(ns, legacy).pop(0)]
        if old and ns.index and not many:
            p.error(f"give the index folder once, as --index DIR (got also {show_path(old[0])})")
        if old:
            warn_deprecated(f"the index folder as a positional argument is deprecated in {command}, use --index DIR")
            ns.index = (ns.index or []) + old if many else old[0]
        if required and not ns.index:
            p.error("the following arguments are required: --index DIR")

    parser.post_parse.append(hook)
    if required:
        parser.shown_required.append(action)
    return action
