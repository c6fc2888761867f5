"""``milnce.train.dist``: Distributed helpers."""

from __future__ import annotations

import contextlib
import subprocess
import sys

import pytest

from eval_fixtures import AUDIT, narrow_ops, subprocess_env

pytest.importorskip("webdataset")

from milnce.train import dist as tdist


@pytest.mark.slow
def test_the_distributed_steps_have_no_float32_operation(tmp_path):
    """The same under torchrun (2 processes, gloo): the DDP step with the all-gathered loss and
    the gradient-cached step across processes (each rank writes its own file)."""
    env = {**subprocess_env(), "MILNCE_AUDIT_OUT": str(tmp_path)}
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(AUDIT)], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    found = "".join((tmp_path / f"rank{r}.json").read_text() for r in (0, 1))
    assert sorted(narrow_ops(found), key=lambda r: r["rank"]) == [
        {"rank": 0, "narrow_ops": {}}, {"rank": 1, "narrow_ops": {}}]

# ----------------------------------------------------------------------------- the process group

def test_single_process_has_no_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(tdist.dist, "destroy_process_group", lambda: pytest.fail("destroyed"))
    with tdist.distributed("cpu") as ctx:
        assert not ctx.distributed and ctx.is_main and str(ctx.device) == "cpu"


@pytest.mark.parametrize("fails", [False, True])
def test_the_group_is_destroyed_however_the_run_ends(monkeypatch, fails):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setattr(tdist.dist, "is_initialized", lambda: True)  # joined already: no rendezvous here
    destroyed = []
    monkeypatch.setattr(tdist.dist, "destroy_process_group", lambda: destroyed.append(1))
    with pytest.raises(RuntimeError) if fails else contextlib.nullcontext():
        with tdist.distributed("cpu") as ctx:
            assert ctx.distributed and ctx.rank == 1 and ctx.world_size == 2 and not ctx.is_main
            if fails:
                raise RuntimeError("a rank failed")
    assert destroyed == [1]
