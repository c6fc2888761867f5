"""Run fp64 training steps of the real S3D under a dispatch mode that records every operation
taking or giving a floating tensor narrower than float64; print them as JSON (an empty list: the
step is float64 end to end). One process: the gradient-cached step; under torchrun (gloo): the
plain DDP step with the all-gathered loss, and the gradient-cached step across processes.

Used by tests/test_train_fp64.py (``python tests/fp64_audit.py`` or under ``torchrun``)."""

from __future__ import annotations

import contextlib
import json
import os
import traceback
from typing import Any

import torch
import torch.distributed as dist
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

NARROW = (torch.float32, torch.float16, torch.bfloat16)


class NarrowOps(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.found: dict[str, int] = {}

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if any(isinstance(t, torch.Tensor) and t.dtype in NARROW for t in tree_flatten((args, kwargs, out))[0]):
            where = [f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno}" for f in traceback.extract_stack()[:-1]
                     if "/milnce/" in f.filename]
            key = f"{func} at {' < '.join(where[-3:]) or '(torch internals)'}"
            self.found[key] = self.found.get(key, 0) + 1
        return out


def main() -> None:
    from milnce.model import S3D
    from milnce.text import Tokenizer
    from milnce.train.step import cached_step, plain_step
    from milnce.train.trainer import TwoTower, init_weights

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        dist.init_process_group("gloo")
    torch.manual_seed(0)
    net = S3D(Tokenizer(["add", "salt", "stir", "soup"]), 16, space_to_depth=True)
    init_weights(net)
    inner = TwoTower(net.to(torch.float64).train())
    model = torch.nn.parallel.DistributedDataParallel(inner) if world > 1 else inner
    g = torch.Generator().manual_seed(1)
    clips = torch.randint(0, 256, (4, 3, 8, 32, 32), dtype=torch.uint8, generator=g)
    ids = torch.randint(1, 5, (4, 2, 16), generator=g)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    common: dict[str, Any] = {"dtype": torch.float64, "autocast": contextlib.nullcontext, "scaler": scaler}
    audit = NarrowOps()
    with audit:
        if world > 1:
            plain_step(model, clips[:2], ids[:2], scale=1.0, sync=True, **common)
        cached_step(model, inner, clips, ids, 2, distributed=world > 1, **common)
    line = json.dumps({"rank": int(os.environ.get("RANK", "0")), "narrow_ops": audit.found})
    out = os.environ.get("MILNCE_AUDIT_OUT")
    if out:  # one file per rank: two ranks printing at once can interleave their lines
        with open(os.path.join(out, f"rank{os.environ.get('RANK', '0')}.json"), "w") as f:
            f.write(line + "\n")
    else:
        print(line, flush=True)
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
