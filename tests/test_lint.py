"""ruff and mypy (configured in pyproject.toml, pinned in the ``test`` extra) report nothing."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    if importlib.util.find_spec(tool) is None:
        pytest.skip(f"{tool} is not installed (pip install -e '.[test]')")
    return subprocess.run([sys.executable, "-m", tool, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff_clean():
    r = _run("ruff", "check", "--no-cache", "src", "tests", "benchmarks")
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.slow  # a full type check takes 15-40 s on 2 shared cores
def test_mypy_clean():
    r = _run("mypy", "--no-incremental", "--cache-dir", "/dev/null", "src/milnce")
    assert r.returncode == 0, r.stdout + r.stderr


def test_mypy_checks_untyped_functions_too():
    tomllib = pytest.importorskip("tomllib", reason="Python >= 3.11 reads pyproject.toml")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    assert config.get("check_untyped_defs") is True
    assert not [o for o in config.get("overrides", []) if o.get("check_untyped_defs") is False], \
        "modules exempted from check_untyped_defs"
