"""The defaults the documentation states are the code's: batch sizes, window settings, the defaults
of the command-line options (read from ``milnce.cli.build_parser()``). Each statement is found with
a regex keyed to the option or the setting, so changing a constant without the docs fails here."""

from __future__ import annotations

import argparse
import re
from dataclasses import fields
from pathlib import Path

import pytest

from milnce.cli import build_parser
from milnce.weights import DEFAULT_WEIGHTS, REGISTRY
from milnce.windows import DEFAULT_BATCH_CPU, DEFAULT_BATCH_CUDA, WindowSettings, default_stride

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
NUM = r"\d[\d,]*(?:\.\d+)?"


def pages() -> list[Path]:
    """The documentation pages and README (not the pending notes, not the changelog: history)."""
    found = sorted(p for p in DOCS.rglob("*.md") if "pending" not in p.relative_to(DOCS).parts)
    return found + [ROOT / "README.md"]


def flat(path: Path) -> str:
    """The page as one line: whitespace runs (line wraps) become one space, bold marks dropped."""
    return re.sub(r"\s+", " ", path.read_text()).replace("**", "")


def number(text: str) -> float:
    return float(text.replace(",", ""))


def statements(pattern: str) -> list[tuple[str, re.Match[str]]]:
    rx = re.compile(pattern)
    return [(p.name, m) for p in pages() for m in rx.finditer(flat(p))]


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def option_defaults(option: str) -> dict[str, object]:
    """``{command: default}`` of ``option`` in every subcommand that has it."""
    out: dict[str, object] = {}
    for name, sp in subcommands().items():
        for action in sp._actions:
            if option in action.option_strings:
                out[name] = action.default
    return out


PUBLISHED = REGISTRY[DEFAULT_WEIGHTS]


# -- batch size ------------------------------------------------------------------------------------

def test_batch_size_defaults_match_the_constants() -> None:
    cpu = statements(r"\b(\d+) (?:windows per model call )?on the CPU\b")
    cuda = statements(r"\b(\d+) (?:windows per model call )?on CUDA\b")
    assert len(cpu) >= 4 and len(cuda) >= 4, (cpu, cuda)   # cli, extract (2), search, performance
    wrong = [(page, m.group(0)) for page, m in cpu if int(m.group(1)) != DEFAULT_BATCH_CPU]
    wrong += [(page, m.group(0)) for page, m in cuda if int(m.group(1)) != DEFAULT_BATCH_CUDA]
    assert not wrong, f"batch-size defaults in the docs differ from {DEFAULT_BATCH_CPU} (CPU) / {DEFAULT_BATCH_CUDA} (CUDA): {wrong}"


def test_train_batch_size_default() -> None:
    from milnce.train.config import TrainConfig

    found = statements(r"`train --batch-size` is clips per optimiser step \(default (\d+)\)")
    assert found
    assert all(int(m.group(1)) == TrainConfig().batch_size for _, m in found), found


# -- windows ---------------------------------------------------------------------------------------

def test_window_settings_default_to_the_published_model() -> None:
    w = WindowSettings()
    assert (w.fps, w.num_frames, w.size) == (PUBLISHED.fps, PUBLISHED.num_frames, PUBLISHED.size)
    assert w.stride == default_stride(w.num_frames) == PUBLISHED.num_frames // 2
    assert {f.name for f in fields(WindowSettings)} >= {"fps", "num_frames", "size", "stride"}
    for n in (1, 2, 8, 9, 32, 64):     # "half the window", whatever the window
        assert default_stride(n) == max(1, n // 2)


def test_published_window_as_the_docs_state_it() -> None:
    """``the model's / published / default ... 32 frames at 10 fps[, 224 px]``."""
    found = statements(r"(?:default|published|model's|s3d_howto100m\"\]`\)):?[^.;|]{0,80}?\b(\d+) frames at "
                       rf"({NUM}) fps(?:, (\d+) px)?")
    assert len(found) >= 3, found
    for page, m in found:
        assert int(m.group(1)) == PUBLISHED.num_frames, (page, m.group(0))
        assert number(m.group(2)) == PUBLISHED.fps, (page, m.group(0))
        if m.group(3):
            assert int(m.group(3)) == PUBLISHED.size, (page, m.group(0))


def test_window_lengths_and_default_strides_in_seconds() -> None:
    """``N frames at F fps (a X s window every Y s)``: X = N/F and Y = the default stride / F;
    ``# a X s window every Y s`` after a plain ``milnce index``: the published window."""
    found = statements(rf"\b(\d+) frames at ({NUM}) fps \(a ({NUM}) s window every ({NUM}) s\)")
    assert len(found) >= 2, found
    for page, m in found:
        frames, fps, length, every = int(m.group(1)), number(m.group(2)), number(m.group(3)), number(m.group(4))
        assert length == pytest.approx(frames / fps), (page, m.group(0))
        assert every == pytest.approx(default_stride(frames) / fps), (page, m.group(0))
    comments = statements(rf"milnce index [^#`]*?# a ({NUM}) s window every ({NUM}) s")
    assert len(comments) >= 3, comments
    for page, m in comments:
        assert number(m.group(1)) == pytest.approx(PUBLISHED.num_frames / PUBLISHED.fps), (page, m.group(0))
        assert number(m.group(2)) == pytest.approx(default_stride(PUBLISHED.num_frames) / PUBLISHED.fps), (page, m.group(0))


def test_default_stride_is_stated_as_half_the_window() -> None:
    """``16 frames for the published 32 frames``, ``(16 of 32 frames)``, ``a window every 16 frames,
    half the window``, ``4 frames for a run trained on 8 frames``."""
    pairs = statements(r"\b(\d+) (?:frames )?(?:of|for the published|for a run trained on) (\d+) frames")
    assert len(pairs) >= 3, pairs
    for page, m in pairs:
        assert int(m.group(1)) == default_stride(int(m.group(2))), (page, m.group(0))
    every = statements(r"the model's (\d+) frames at [^;]*?a window every (\d+) frames, half the window")
    assert every
    for page, m in every:
        assert int(m.group(1)) == PUBLISHED.num_frames, (page, m.group(0))
        assert int(m.group(2)) == default_stride(PUBLISHED.num_frames), (page, m.group(0))
    assert statements(r"default stride is half the window")


def test_the_stride_error_quoted_in_the_docs_matches_the_code() -> None:
    from milnce.errors import UsageError

    quoted = statements(r"milnce: error: (stride \d+ frames is longer than the window \(\d+ frames\)[^`]*?to skip them)")
    assert quoted
    for page, m in quoted:
        stride, frames = (int(x) for x in re.findall(r"\d+", m.group(1))[:2])
        gap = re.search(rf"({NUM}) s after every window", m.group(1))
        assert gap, m.group(1)
        fps = (stride - frames) / number(gap.group(1))   # the gap's length gives the rate
        with pytest.raises(UsageError) as err:
            WindowSettings(fps=fps, num_frames=frames, size=32, stride=stride).check_coverage()
        assert str(err.value) == m.group(1), (page, str(err.value))


# -- command-line options --------------------------------------------------------------------------

def cli_table() -> dict[str, tuple[str, list[str]]]:
    """cli.md's option vocabulary: ``{option: (meaning, commands)}``."""
    rows: dict[str, tuple[str, list[str]]] = {}
    for line in (DOCS / "cli.md").read_text().splitlines():
        m = re.match(r"\| `(-{1,2}[a-z0-9-]+)` \| (.*?) \| ([a-z0-9, -]+) \|$", line)
        if m:
            rows[m.group(1)] = (m.group(2), [c.strip() for c in m.group(3).split(",")])
    return rows


def test_cli_table_defaults_match_the_parser() -> None:
    rows = cli_table()
    assert len(rows) > 100
    checked = 0
    for option, (meaning, commands) in rows.items():
        if "default" not in meaning:
            continue
        defaults = option_defaults(option)
        assert set(commands) <= set(defaults), (option, commands, sorted(defaults))
        stated = meaning.split("default", 1)[1]
        if option == "--stride":
            assert stated.strip().startswith("half the window"), stated
            assert all(defaults[c] is None for c in commands)   # None: WindowSettings' half window
            m = re.search(r"\((\d+) of (\d+) frames\)", stated)
            assert m and int(m.group(1)) == default_stride(int(m.group(2))) and int(m.group(2)) == PUBLISHED.num_frames
            checked += 1
            continue
        per_command = dict((c, number(n)) for n, c in re.findall(rf"({NUM}) in ([a-z-]+)", stated))
        if per_command:
            assert set(per_command) == set(commands), (option, per_command)
            for command, value in per_command.items():
                assert defaults[command] == value, (option, command, defaults[command], value)
        else:
            value = number(re.match(rf"\s*({NUM})", stated).group(1))  # type: ignore[union-attr]
            for command in commands:
                assert defaults[command] == value, (option, command, defaults[command], value)
        checked += 1
    # at least -k, the three clip limits, --port and --stride state their default
    assert checked >= 6
    for option in ("-k", "--clip-max-files", "--clip-max-mb", "--clip-send-timeout", "--stride"):
        assert "default" in rows[option][0], option


def test_search_k_default() -> None:
    assert option_defaults("-k")["search"] == 10
    meaning = cli_table()["-k"][0]
    assert re.search(r"default 10 in search\b", meaning)


def test_serve_option_table_defaults() -> None:
    """serve.md's table of `milnce serve` options and their defaults."""
    defaults = option_defaults("--clip-max-files")
    assert list(defaults) == ["serve"]
    seen = 0
    for line in (DOCS / "serve.md").read_text().splitlines():
        m = re.match(rf"\| `(--[a-z0-9-]+)(?: [A-Z]+)?` \| ({NUM}) \|", line)
        if m:
            assert option_defaults(m.group(1))["serve"] == number(m.group(2)), line
            seen += 1
    assert seen >= 3


def fallback_default(option: str) -> object:
    """The default of an option whose parser default is None (the library decides)."""
    if option == "--not-weight":
        from milnce.index.negatives import DEFAULT_NOT_WEIGHT

        return DEFAULT_NOT_WEIGHT
    from milnce.train.config import TrainConfig

    return getattr(TrainConfig(), option.lstrip("-").replace("-", "_"))


def test_option_default_statements_in_prose() -> None:
    """"`--option [ARG]` ... (default N": the parser's default, or the library's when that is None."""
    found = statements(rf"`(--[a-z0-9-]+)(?: [A-Z_]+)?`[^(`]{{0,30}}\(default ({NUM})")
    found = [(page, m) for page, m in found if m.group(1) != "--batch-size"]   # per device: see above
    assert len(found) >= 4, found
    for page, m in found:
        option, value = m.group(1), number(m.group(2))
        defaults = {d for d in option_defaults(option).values()}
        assert defaults, (page, option)
        if defaults == {None}:
            defaults = {fallback_default(option)}
        assert value in defaults, (page, m.group(0), defaults)
