"""``benchmarks/bench_decode.py``: Decoding capacity of this machine against what the extraction pipeline gets
out of it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_bench_decode_runs(tmp_path):
    """benchmarks/bench_decode.py end to end on tiny videos (raw decoders vs the pipeline)."""
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_decode.py"
    r = subprocess.run([sys.executable, str(script), "--videos", "2", "--seconds", "1", "--width", "64", "--height", "48",
                        "--workers", "1", "--workdir", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "pipeline/raw" in r.stdout and "after start-up/raw" in r.stdout
