"""``milnce.commands.vocabulary``: One vocabulary of options across commands."""

from __future__ import annotations

import argparse
import re

import pytest

from milnce.cli import _setup_logging, build_parser
from milnce.commands.vocabulary import MEANINGS, _DeprecatedAlias
from milnce.windows import DEFAULT_BATCH_CPU, DEFAULT_BATCH_CUDA


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


COMMANDS = _commands()


def _visible(p: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in p._actions if a.help is not argparse.SUPPRESS and not isinstance(a, argparse._HelpAction)]


def _kind(a: argparse.Action) -> str:
    """What an option takes: nothing (a switch), a number, or text."""
    if a.nargs == 0:
        return "switch"
    return "number" if a.type in (int, float) else "text"


def test_commands_are_all_there():
    assert {"index", "search", "remove", "localize", "demo", "clip", "serve", "extract", "embed-video", "train",
            "make-synthetic", "export", "eval"} <= set(COMMANDS)


def test_every_option_name_has_one_meaning():
    """Every option is in the table of meanings, and takes the same kind of value everywhere
    (``--videos`` was a folder in demo/eval, a count in make-synthetic and a switch in search)."""
    kinds: dict[str, dict[str, str]] = {}
    for name, p in COMMANDS.items():
        for a in _visible(p):
            # --hflip/--no-hflip: one option, one meaning
            for opt in a.option_strings[:1] if isinstance(a, argparse.BooleanOptionalAction) else a.option_strings:
                assert opt in MEANINGS, f"{name} {opt}: add it to milnce.commands.vocabulary.MEANINGS"
                kinds.setdefault(opt, {})[name] = _kind(a)
    clashes = {opt: by for opt, by in kinds.items() if len(set(by.values())) > 1}
    assert not clashes
    assert kinds["--videos"].keys() == {"demo", "eval"} and set(kinds["--videos"].values()) == {"text"}
    assert set(MEANINGS) == set(kinds), "MEANINGS names options no command has"


def test_metavars_are_upper_case():
    bad = []
    for name, p in COMMANDS.items():
        fmt = p._get_formatter()
        for a in _visible(p):
            default = a.dest.upper() if a.option_strings else a.dest
            shown = re.sub(r"\{[^}]*\}", "", fmt._format_args(a, default)) if a.nargs != 0 else ""
            if re.search(r"[a-z]", shown):
                bad.append(f"{name} {a.option_strings or a.dest}: {shown}")
    assert not bad


def test_the_index_folder_is_spelled_one_way():
    having = set()
    for name, p in COMMANDS.items():
        for a in _visible(p):
            if "--index" in a.option_strings:
                assert a.option_strings == ["--index"] and a.metavar == "DIR", name
                having.add(name)
            elif not a.option_strings:
                assert "index" not in a.dest and "index folder" not in (a.help or ""), (name, a.dest)
    assert having == {"index", "search", "remove", "localize", "demo", "clip", "serve"}
    for name in ("index", "search", "remove", "clip", "serve"):  # required there, and the usage says so
        usage = COMMANDS[name].format_usage()
        assert "--index DIR" in usage and "[--index DIR]" not in usage, name


def test_model_commands_take_weights():
    for name, p in COMMANDS.items():
        opts = {o for a in _visible(p) for o in a.option_strings}
        if opts & {"--vocab", "--no-download", "--eager"}:
            assert "--weights" in opts, name
    assert COMMANDS["train"]._option_string_actions["--weights"].dest == "init"  # the config key stays `init`


# Every deprecated spelling: (argv, attribute, value it gives, the warning).
DEPRECATED = [
    (["make-synthetic", "OUT", "--videos", "3"], "videos", 3, "--videos is deprecated in make-synthetic, use --num-videos"),
    (["make-synthetic", "OUT", "--val-videos", "2"], "val_videos", 2,
     "--val-videos is deprecated in make-synthetic, use --num-val-videos"),
    (["search", "--index", "I", "q", "--videos"], "videos", True, "--videos is deprecated in search, use --list-videos"),
    (["train", "--out", "R", "--init", "W"], "init", "W", "--init is deprecated in train, use --weights"),
    (["extract", "X", "--verify"], "verify", True, "--verify is deprecated in extract, use --verify-files"),
    (["embed-video", "X", "--out", "O", "--verify"], "verify", True,
     "--verify is deprecated in embed-video, use --verify-files"),
    (["embed-video", "X", "--out", "O", "--features"], "features", True,
     "--features is deprecated in embed-video, use --mixed-5c"),
    (["export", "--onnx", "P", "--verify"], "verify", True, "--verify is deprecated in export, use --check-outputs"),
    (["export", "--onnx", "P", "--frames", "8"], "num_frames", 8, "--frames is deprecated in export, use --num-frames"),
]


def test_every_deprecated_alias_is_tested():
    found = {(name, o) for name, p in COMMANDS.items() for a in p._actions if isinstance(a, _DeprecatedAlias)
             for o in a.option_strings}
    assert found == {(argv[0], argv[argv.index(w.split()[0])]) for argv, _, _, w in DEPRECATED}


@pytest.mark.parametrize("argv, attr, value, warning", DEPRECATED, ids=[" ".join(c[0][:1] + c[3].split()[:1]) for c in DEPRECATED])
def test_deprecated_spellings_work_and_warn(argv, attr, value, warning, capsys):
    _setup_logging()
    new = [tok for tok in argv]
    args = build_parser().parse_args(argv)
    assert getattr(args, attr) == value
    assert capsys.readouterr().err == f"milnce: warning: {warning}\n"
    old = warning.split()[0]
    replacement = warning.rsplit(" ", 1)[1]
    new[new.index(old)] = replacement
    again = build_parser().parse_args(new)
    assert vars(again) == vars(args)
    assert capsys.readouterr().err == ""  # the new spelling: no warning


LEGACY = [  # the old positional index folder -> the same namespace as --index DIR
    (["search", "IDX", "red car", "blue"], ["search", "--index", "IDX", "red car", "blue"]),
    (["search", "IDX", "--like", "v.mp4"], ["search", "--like", "v.mp4", "--index", "IDX"]),
    (["remove", "IDX", "a.mp4", "b"], ["remove", "--index", "IDX", "a.mp4", "b"]),
    (["clip", "IDX", "3@1-2"], ["clip", "3@1-2", "--index", "IDX"]),
    (["serve", "A", "B"], ["serve", "--index", "A", "--index", "B"]),
]


@pytest.mark.parametrize("old, new", LEGACY, ids=[c[0][0] + str(i) for i, c in enumerate(LEGACY)])
def test_positional_index_folder_still_works_with_a_warning(old, new, capsys):
    _setup_logging()
    a = build_parser().parse_args(old)
    assert capsys.readouterr().err == (f"milnce: warning: the index folder as a positional argument is deprecated in "
                                       f"{old[0]}, use --index DIR\n")
    b = build_parser().parse_args(new)
    assert capsys.readouterr().err == ""
    assert vars(a) == vars(b)


# ----------------------------------------------------------------------------- defaults in --help

def _expanded_help(p: argparse.ArgumentParser, a: argparse.Action) -> str:
    return " ".join(p._get_formatter()._expand_help(a).split())


def test_batch_size_default_is_one_constant_printed_by_every_command():
    from milnce.video.pipeline import DEFAULT_BATCH_CPU as PIPE_CPU
    from milnce.video.pipeline import resolve_batch_size

    assert PIPE_CPU == DEFAULT_BATCH_CPU and resolve_batch_size(None, "cpu") == DEFAULT_BATCH_CPU
    said = f"default: {DEFAULT_BATCH_CUDA} on CUDA, {DEFAULT_BATCH_CPU} on the CPU"
    embedding = set()
    for name, p in COMMANDS.items():
        a = p._option_string_actions.get("--batch-size")
        if a is None or name == "train":  # train: clips per optimiser step, its own setting
            continue
        embedding.add(name)
        assert a.default is None, name  # resolved by the pipeline: one default
        assert said in " ".join(p.format_help().split()), name
    assert embedding == {"extract", "embed-video", "index", "localize", "demo", "eval"}


_DEFAULT = re.compile(r"\(default:? ([^;,:)\s]+)")


def test_defaults_printed_in_help_are_the_parsers():
    """Where an option has a default of its own, the first "(default X" of its help is that value."""
    checked = 0
    for name, p in COMMANDS.items():
        for a in _visible(p):
            if a.default in (None, False, argparse.SUPPRESS) or a.nargs == 0 or not a.option_strings:
                continue
            m = _DEFAULT.search(_expanded_help(p, a))
            if m is None:
                continue
            printed = m.group(1)
            value = format(a.default, "g") if isinstance(a.default, float) else str(a.default)
            assert printed == value, f"{name} {a.option_strings[0]}: help says {printed}, the default is {value}"
            checked += 1
    assert checked >= 10
