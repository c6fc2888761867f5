"""``benchmarks/bench_startup.py``: Start-up time of milnce commands against ``python -c "import torch"``, in one
run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_startup_benchmark_runs(capsys):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench_startup
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    assert bench_startup.main(["--quick", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    assert "x import torch" in out and "load_model + encode_text" in out and "milnce --help" in out
