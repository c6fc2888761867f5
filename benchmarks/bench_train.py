"""Training throughput and memory: gradient caching as the batch grows, and data-loading waits.

1. ``memory``: at a fixed micro-batch M, one optimiser step of ``--micro-batch M`` (gradient
   caching) for B = M, 2M, 4M, 8M clips, each B in a fresh process: peak memory (RSS on the CPU,
   ``torch.cuda.max_memory_allocated`` on CUDA) and step time, against the sum of B/M plain steps
   of M clips over the same clips (targets: memory flat within 10%, time within 1.4x).
2. ``data``: the real training loop (decoding in DataLoader workers, random crops, forward +
   MIL-NCE + backward + Adam) on both layouts, a HowTo100M-style folder and webdataset tar shards
   of the same videos: the fraction of step time spent waiting for data (target < 5%).

    python benchmarks/bench_train.py --quick                # 2-core CPU: a minute or two
    python benchmarks/bench_train.py --device cuda --micro-batch 8 --num-frames 32 --size 224
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _model(device: torch.device, tok=None):  # type: ignore[no-untyped-def]
    sys.path.insert(0, SRC)
    from milnce.model import S3D
    from milnce.text import Tokenizer
    from milnce.train.trainer import TwoTower, init_weights

    tok = tok or Tokenizer([f"w{i}" for i in range(64)])
    torch.manual_seed(0)
    net = S3D(tok, 512).to(device).train()
    init_weights(net)
    net.text_module.word_embd.weight.requires_grad_(False)
    return net, TwoTower(net)


def _amp(device: torch.device, precision: str):  # type: ignore[no-untyped-def]
    if precision == "fp32":
        return contextlib.nullcontext, torch.amp.GradScaler(device.type, enabled=False)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return (lambda: torch.autocast(device.type, dtype=dtype)), torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def one_size(args: argparse.Namespace) -> dict:
    """Child process: one B, cached steps and the plain steps over the same clips."""
    sys.path.insert(0, SRC)
    from milnce.train.step import cached_step, plain_step

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    net, model = _model(device)
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-5)
    b, m = args.one, args.micro_batch
    g = torch.Generator().manual_seed(1)
    clips = torch.randint(0, 256, (b, 3, args.num_frames, args.size, args.size), generator=g, dtype=torch.uint8).to(device)
    ids = torch.randint(1, 64, (b, 2, 16), generator=g).to(device)
    null, scaler = _amp(device, args.precision)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def timed(fn) -> float:  # type: ignore[no-untyped-def]
        times = []
        for i in range(args.warmup + args.steps):
            sync()
            t0 = time.perf_counter()
            fn()
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
            sync()
            if i >= args.warmup:
                times.append(time.perf_counter() - t0)
        return statistics.median(times)

    def plain_over_b() -> None:
        for a in range(0, b, m):
            plain_step(model, clips[a:a + m], ids[a:a + m], dtype=torch.float32, autocast=null, scaler=scaler,
                       scale=1.0, sync=True)

    plain = timed(plain_over_b)  # first, so that the cached run's peak is not hidden by it on CUDA
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    cached = timed(lambda: cached_step(model, model, clips, ids, m, dtype=torch.float32, autocast=null,
                                       scaler=scaler, distributed=False))
    peak = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"B": b, "M": m, "cached_step_s": cached, "plain_steps_s": plain, "ratio": cached / plain,
            "peak_memory_mib": peak / 2**20}


def memory_section(args: argparse.Namespace) -> list[dict]:
    rows = []
    for factor in (1, 2, 4, 8):
        cmd = [sys.executable, __file__, "--one", str(args.micro_batch * factor), "--micro-batch", str(args.micro_batch),
               "--device", args.device, "--num-frames", str(args.num_frames), "--size", str(args.size),
               "--steps", str(args.steps), "--warmup", str(args.warmup), "--precision", args.precision]
        cmd += ["--threads", str(args.threads)] if args.threads else []
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"B={r['B']:4d} M={r['M']}: cached step {r['cached_step_s']:.3f} s, {r['B'] // r['M']} plain steps of "
              f"M {r['plain_steps_s']:.3f} s (ratio {r['ratio']:.2f}); peak memory {r['peak_memory_mib']:.0f} MiB",
              file=sys.stderr)
    growth = rows[-1]["peak_memory_mib"] / rows[0]["peak_memory_mib"]
    print(f"memory at B={rows[-1]['B']} vs B={rows[0]['B']}: {growth:.3f}x (target <= 1.10); step time vs plain "
          f"steps: {max(r['ratio'] for r in rows):.2f}x at worst (target <= 1.4)", file=sys.stderr)
    return rows


def data_section(args: argparse.Namespace, tmp: Path) -> dict:
    sys.path.insert(0, SRC)
    from milnce.text import Tokenizer, load_vocab
    from milnce.train.config import TrainConfig
    from milnce.train.dist import DistContext
    from milnce.train.loaders import find_data, make_loader
    from milnce.train.step import plain_step
    from milnce.train.synthetic import make_synthetic, to_shards

    device = torch.device(args.device)
    folder = make_synthetic(tmp / "folder", videos=max(32, args.batch_size * 2), val_videos=0,
                            size=max(64, args.size + args.size // 4), progress=False)
    shards = tmp / "wds"
    shutil.copytree(folder, shards)
    to_shards(shards, per_shard=8)
    tok = Tokenizer(load_vocab(folder / "vocab.npy"))
    net, model = _model(device, tok)
    out = {}
    for name, root in (("folder", folder), ("wds", shards)):
        cfg = TrainConfig(data=str(root), fps=args.fps, num_frames=args.num_frames, size=args.size,
                          min_time=args.num_frames / args.fps, num_candidates=2, batch_size=args.batch_size,
                          workers=args.workers, steps=args.warmup + args.steps)
        data, _, _ = find_data(str(root), None)
        loader, _ = make_loader(data, cfg, tok, hflip=True, start=0, ctx=DistContext(device=device), resume={},
                                pin=device.type == "cuda")
        opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-5)
        amp, scaler = _amp(device, args.precision)
        it = iter(loader)
        waits, times = [], []
        for i in range(args.warmup + args.steps):
            t0 = time.perf_counter()
            clips, ids, _info = next(it)
            t1 = time.perf_counter()
            plain_step(model, clips.to(device), ids.to(device), dtype=torch.float32, autocast=amp,
                       scaler=scaler, scale=1.0, sync=True)
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= args.warmup:
                waits.append(t1 - t0)
                times.append(time.perf_counter() - t0)
        del it, loader
        out[name] = {"data_wait_fraction": sum(waits) / sum(times), "clips_per_s": args.batch_size * len(times) / sum(times)}
        print(f"{name}: {out[name]['clips_per_s']:.2f} clips/s, waiting for data "
              f"{100 * out[name]['data_wait_fraction']:.1f}% of step time (target < 5%)", file=sys.stderr)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes for a busy 2-core CPU")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--micro-batch", type=int, default=8, help="M of the memory section")
    ap.add_argument("--batch-size", type=int, default=16, help="clips per step of the data section")
    ap.add_argument("--num-frames", type=int, default=16)
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--fps", type=float, default=4.0)
    ap.add_argument("--steps", type=int, default=6, help="timed steps (after --warmup)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    ap.add_argument("--sections", default="memory,data")
    ap.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32", help="autocast (fp16: CUDA)")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one_size(args)))
        return
    if args.quick:
        args.micro_batch, args.batch_size, args.num_frames, args.size, args.steps, args.warmup = 2, 8, 8, 32, 3, 1
        args.workers = min(args.workers, 1)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"bench_train: {dev}, {args.num_frames} x {args.size} px clips, torch threads {torch.get_num_threads()}",
          file=sys.stderr)
    result: dict = {"device": dev, "num_frames": args.num_frames, "size": args.size, "precision": args.precision}
    sections = args.sections.split(",")
    if "memory" in sections:
        result["memory"] = memory_section(args)
    if "data" in sections:
        with tempfile.TemporaryDirectory() as tmp:
            result["data"] = data_section(args, Path(tmp))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
