"""``benchmarks/bench_inference.py``: Video-tower inference speed."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_benchmark_script_runs(capsys):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench_inference
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    assert bench_inference.main(["--quick", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    assert "x eager" in out and "fast fp32" in out
