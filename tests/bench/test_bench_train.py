"""``benchmarks/bench_train.py``: Training throughput and memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("webdataset")


@pytest.mark.slow
def test_bench_train_end_to_end():
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_train.py"
    res = subprocess.run([sys.executable, str(script), "--micro-batch", "2", "--batch-size", "2", "--num-frames", "8",
                          "--size", "32", "--steps", "1", "--warmup", "0", "--workers", "0", "--threads", "1"],
                         env=_env(), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert [r["B"] for r in out["memory"]] == [2, 4, 8, 16] and all(r["peak_memory_mib"] > 0 for r in out["memory"])
    assert set(out["data"]) == {"folder", "wds"} and all(0 <= v["data_wait_fraction"] <= 1 for v in out["data"].values())

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _env(threads: int = 1) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS=str(threads))
