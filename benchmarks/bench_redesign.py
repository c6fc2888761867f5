"""Extraction speed before/after the pipeline redesign: the same ``run_jobs`` call through the
``src`` of a base commit and through this tree's, in alternating subprocesses.

    python benchmarks/bench_redesign.py                      # base 0c79a6d, 5 rounds, 4 x 4 s 320x240
    python benchmarks/bench_redesign.py --rounds 7 --workers 2 --num-frames 16 --size 112
    python benchmarks/bench_redesign.py --base-src /tmp/base/src --quick

Each round runs the base and the new pipeline once each (the order alternating between rounds) on
the same videos, settings and random weights (``bench_extract.random_model``, seed 0); each
subprocess times ``run_jobs`` end to end after a warm-up batch. Prints each round's video-seconds
per wall-second and the median of the per-round ratios new / base (1.00 = unchanged; the goal is
within 5%). The base ``src`` comes from ``git archive BASE src`` into a temporary folder unless
``--base-src`` names one.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
NEW_SRC = HERE.parent / "src"

CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
import torch
import milnce
from milnce.api import MILNCE
from milnce.extract import VideoJob, run_jobs
from milnce.model import S3D
from milnce.windows import WindowSettings
cfg = json.loads(sys.argv[2])
torch.set_num_threads(cfg["threads"])
g = torch.Generator().manual_seed(0)  # bench_extract.random_model's weights (not imported: it puts its src first)
net = S3D(None, 512, num_embeddings=2)
sd = {}
for k, v in net.state_dict().items():
    if k.endswith("running_var"):
        v = torch.rand(v.shape, generator=g) * 0.5 + 0.5
    elif k.endswith("running_mean") or k.endswith(".bias"):
        v = torch.randn(v.shape, generator=g) * 0.05
    elif v.ndim == 5:
        v = torch.randn(v.shape, generator=g) * (2.0 / v[0].numel()) ** 0.5
    sd[k] = v
net.load_state_dict(sd)
model = MILNCE(net.eval())
s = WindowSettings(fps=cfg["fps"], num_frames=cfg["num_frames"], size=cfg["size"], stride=cfg["stride"])
with torch.inference_mode():  # warm-up: builds the fast path, first allocations
    model.video_net(torch.zeros(cfg["batch"], 3, s.num_frames, s.size, s.size))
t = time.perf_counter()
res = list(run_jobs(model, [VideoJob(v, key=i) for i, v in enumerate(cfg["videos"])], s,
                    batch_size=cfg["batch"], workers=cfg["workers"], features=True))
wall = time.perf_counter() - t
assert all(r.error is None for r in res), [r.error for r in res]
print(json.dumps({"wall_s": wall, "windows": sum(len(r) for r in res), "src": milnce.__file__}))
"""


def _base_src(commit: str, given: str | None, tmp: Path) -> str:
    if given:
        return given
    repo = HERE.parent
    archive = subprocess.run(["git", "-C", str(repo), "archive", commit, "src"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive, check=True)
    return str(tmp / "src")


def _run(src: str, cfg: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = src  # the decoding processes import the same tree
    r = subprocess.run([sys.executable, "-c", CHILD, src, json.dumps(cfg)], capture_output=True,
                       text=True, env=env, timeout=1800)
    if r.returncode:
        raise SystemExit(f"benchmark child failed ({src}):\n{r.stderr[-3000:]}")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["src"].startswith(src), (out["src"], src)  # the chosen tree was the one imported
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default="0c79a6d", help="base commit (default 0c79a6d)")
    ap.add_argument("--base-src", help="a base src folder to use instead of git archive")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--videos", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--num-frames", type=int, default=16)
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the model side")
    ap.add_argument("--quick", action="store_true", help="2 rounds, 2 x 2 s videos, 8 x 64 px (a smoke test)")
    a = ap.parse_args(argv)
    if a.quick:
        a.rounds, a.videos, a.seconds, a.num_frames, a.size = 2, 2, 2.0, 8, 64
    sys.path.insert(0, str(HERE))
    from bench_extract import make_videos

    with tempfile.TemporaryDirectory(prefix="milnce-bench-redesign-") as tmp:
        base = _base_src(a.base, a.base_src, Path(tmp))
        vids = make_videos(Path(tmp) / "videos", a.videos, a.seconds, 320, 240)
        cfg = {"videos": [str(v) for v in vids], "fps": 10.0, "num_frames": a.num_frames, "size": a.size,
               "stride": max(1, a.num_frames // 2), "batch": a.batch_size, "workers": a.workers, "threads": a.threads}
        secs = a.videos * a.seconds
        print(f"{a.videos} x {a.seconds:g} s 320x240 H.264, {a.num_frames} x {a.size} px, batch {a.batch_size}, "
              f"{a.workers} worker(s), {a.threads} model thread(s); base {a.base}, {a.rounds} interleaved rounds")
        ratios = []
        for i in range(a.rounds):
            order = [("base", base), ("new", str(NEW_SRC))]
            if i % 2:
                order.reverse()
            got = {name: _run(src, cfg) for name, src in order}
            assert got["base"]["windows"] == got["new"]["windows"]
            rb, rn = secs / got["base"]["wall_s"], secs / got["new"]["wall_s"]
            ratios.append(rn / rb)
            print(f"  round {i + 1}: base {rb:6.2f}  new {rn:6.2f} video-s/s  ratio {rn / rb:.3f}")
        print(f"median ratio new / base: {statistics.median(ratios):.3f} (goal: within 0.95 .. 1.05 or faster)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
