"""``benchmarks/bench_gpu.py``: GPU check and benchmark."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

# ------------------------------------------------------------------------------ benchmarks


def _bench(name):
    import importlib.util

    bench_dir = Path(__file__).resolve().parents[2] / "benchmarks"
    sys.path.insert(0, str(bench_dir))
    try:
        spec = importlib.util.spec_from_file_location(name, bench_dir / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(bench_dir))
    return mod


@pytest.mark.slow
def test_bench_gpu_args_and_cpu_dry_run(tmp_path, capsys):
    bench = _bench("bench_gpu")
    a = bench.parse_args(["--quick"])
    assert (a.batch, a.frames, a.size, a.rounds, a.videos, a.no_compile) == (64, 32, 224, 3, 8, True)
    with pytest.raises(SystemExit):
        bench.parse_args(["--batch", "0"])
    if not torch.cuda.is_available():
        assert bench.main(["--quick"]) == 2
        assert "needs a CUDA GPU" in capsys.readouterr().err
    assert bench.main(["--dry-run", "--workdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "float64" in out and "fast bf16" in out and "extraction / min(bound, decode)" in out
