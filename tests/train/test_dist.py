"""``milnce.train.dist``: Distributed helpers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("webdataset")


AUDIT = Path(__file__).resolve().parents[1] / "fp64_audit.py"


def _narrow_ops(stdout: str) -> list[dict]:
    import json

    return [json.loads(x) for x in stdout.splitlines() if x.startswith("{")]


@pytest.mark.slow
def test_the_distributed_steps_have_no_float32_operation(tmp_path):
    """The same under torchrun (2 processes, gloo): the DDP step with the all-gathered loss and
    the gradient-cached step across processes (each rank writes its own file)."""
    env = {**_env(), "MILNCE_AUDIT_OUT": str(tmp_path)}
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(AUDIT)], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    found = "".join((tmp_path / f"rank{r}.json").read_text() for r in (0, 1))
    assert sorted(_narrow_ops(found), key=lambda r: r["rank"]) == [
        {"rank": 0, "narrow_ops": {}}, {"rank": 1, "narrow_ops": {}}]

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _env(threads: int = 1) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS=str(threads))
