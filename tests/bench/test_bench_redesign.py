"""benchmarks/bench_redesign.py: its sections' options, and a smoke run (slow) of all three."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "bench_redesign.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_redesign", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_redesign_refuses_an_unknown_section(capsys):
    bench = _bench()
    assert set(bench.SECTIONS) == {"extract", "search", "inference"}
    with pytest.raises(SystemExit) as exc:
        bench.main(["--what", "extract,bogus"])
    assert exc.value.code == 2
    assert "--what" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.main(["--rounds", "0", "--what", "search"])


@pytest.mark.slow
def test_bench_redesign_quick_runs():
    """All three sections, --quick, one round, this tree's src as the 'base' too (no git archive)."""
    r = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--rounds", "1", "--base-src", str(ROOT / "src")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    for name in ("extract", "search", "inference"):
        assert f"{name}: median ratio new / base" in r.stdout
    assert "different results" not in r.stdout
    assert "summary (median new / base): extract" in r.stdout
