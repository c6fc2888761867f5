"""``milnce.train.dist.distributed``: the process group that ``milnce train`` joins under torchrun is
destroyed when the run ends, however it ends; a single process has none to destroy."""

from __future__ import annotations

import contextlib

import pytest

from milnce.train import dist as tdist


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

