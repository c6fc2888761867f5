"""Video-tower inference speed: the fast path against the plain eager network, same process.

    python benchmarks/bench_inference.py                      # batch 2, 32x224x224, fp32 + bf16
    python benchmarks/bench_inference.py --weights s3d_howto100m.pth --vocab s3d_dict.npy
    python benchmarks/bench_inference.py --quick              # tiny input, smoke test
    python benchmarks/bench_inference.py --device cuda        # GPU: AMP + channels_last

Prints clips/s of each path, the ratio against the eager network (median over interleaved
rounds, so machine noise hits both sides alike), GFLOP/s against a matmul peak measured
here, and the output agreement (relative max error for fp32, cosine for bf16).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from _alive import agreement, random_net, real_batch  # noqa: E402
from milnce.fast import FastVideoNet  # noqa: E402

GFLOP_PER_CLIP = 74.2  # 32 x 224 x 224, 2 x multiply-adds


def matmul_peak(device: torch.device, n: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    for _ in range(3):
        a @ b
    _sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, x: torch.Tensor, device: torch.device) -> float:  # type: ignore[no-untyped-def]
    _sync(device)
    t = time.perf_counter()
    fn(x)
    _sync(device)
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--frames", type=int, default=32)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--weights", help="real weights (.pth/.safetensors); random weights otherwise")
    p.add_argument("--vocab")
    p.add_argument("--no-bf16", action="store_true")
    p.add_argument("--compile", action="store_true",
                   help="also time torch.compile (inductor, freezing) of the eager network, in channels_last_3d")
    p.add_argument("--quick", action="store_true", help="batch 1, 8x64x64, 2 rounds (smoke test)")
    args = p.parse_args(argv)
    if args.quick:
        args.batch, args.frames, args.size, args.rounds = 1, 8, 64, 2
    device = torch.device(args.device)

    if args.weights:
        import milnce

        net = milnce.load_model(args.weights, args.vocab, device="cpu", fast=False, download=False).net
    else:
        net = random_net()
    net = net.to(device).eval()
    x = real_batch(args.batch, args.frames, args.size).to(device)  # real video, not noise
    gflop = GFLOP_PER_CLIP * args.batch * (args.frames / 32) * (args.size / 224) ** 2

    paths: dict[str, object] = {"eager fp32": net}
    if device.type == "cuda":
        net_cl = net.to(memory_format=torch.channels_last_3d)

        def amp(v: torch.Tensor):  # type: ignore[no-untyped-def]
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return net_cl(v.contiguous(memory_format=torch.channels_last_3d))

        paths["eager AMP bf16 + channels_last"] = amp
        if not args.no_bf16:
            paths["fast bf16"] = FastVideoNet(net, precision="bf16")
    else:
        paths["fast fp32"] = FastVideoNet(net)
        if not args.no_bf16:
            paths["fast bf16"] = FastVideoNet(net, precision="bf16")
    if args.compile:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True  # lets inductor fold batch-norm and pre-pack weights
        compiled = torch.compile(net.features)
        fc = net.fc

        def compiled_net(v: torch.Tensor):  # type: ignore[no-untyped-def]
            pooled = compiled(v.contiguous(memory_format=torch.channels_last_3d)).mean(dim=(2, 3, 4))
            return {"video_embedding": fc(pooled), "mixed_5c": pooled}

        paths["eager + torch.compile (inductor)"] = compiled_net

    peak = matmul_peak(device)
    print(f"device {device}, threads {torch.get_num_threads()}, input {args.batch}x3x{args.frames}x{args.size}x{args.size}, "
          f"{gflop:.1f} GFLOP per batch, matmul peak {peak:.0f} GFLOP/s")

    with torch.inference_mode():
        ref = net(x)
        # precision against float64 on a larger real batch, and whether rankings change
        xs = real_batch(max(16, args.batch), args.frames, args.size, offset=1).to(device)
        ref64 = torch.cat([net.double()(c.double())["video_embedding"] for c in xs.split(2)])  # chunks: memory
        net.float()
        for name, fn in paths.items():
            e = torch.cat([fn(c)["video_embedding"].double() for c in xs.split(args.batch)])
            rel = ((e - ref64).abs().max() / ref64.abs().max()).item()
            print(f"  {name:32s} vs float64: max relative error {rel:.2e}, top-10 ranking agreement "
                  f"{agreement(e, ref64):.3f} ({xs.shape[0]} real clips)")
        for name, fn in paths.items():
            if name == "eager fp32":
                continue
            out = fn(x)  # warm-up (and compile)
            emb, r = out["video_embedding"].float(), ref["video_embedding"]
            if "bf16" in name:
                cos = torch.nn.functional.cosine_similarity(emb, r).min().item()
                print(f"  {name:32s} min cosine to eager fp32 = {cos:.6f}")
            else:
                rel = ((emb - r).abs().max() / r.abs().max()).item()
                rel5 = ((out["mixed_5c"] - ref["mixed_5c"]).abs().max() / ref["mixed_5c"].abs().max()).item()
                print(f"  {name:32s} max relative error: embedding {rel:.2e}, mixed_5c {rel5:.2e}")
        times: dict[str, list[float]] = {name: [] for name in paths}
        ratios: dict[str, list[float]] = {name: [] for name in paths}
        for _ in range(args.rounds):
            base = timed(net, x, device)
            times["eager fp32"].append(base)
            for name, fn in paths.items():
                if name != "eager fp32":
                    t = timed(fn, x, device)
                    times[name].append(t)
                    ratios[name].append(base / t)
    print(f"\n{'path':34s} {'clips/s':>8s} {'x eager':>8s} {'GFLOP/s':>8s} {'% peak':>7s}")
    for name in paths:
        t = statistics.median(times[name])
        ratio = statistics.median(ratios[name]) if ratios[name] else 1.0
        print(f"{name:34s} {args.batch / t:8.2f} {ratio:8.2f} {gflop / t:8.1f} {100 * gflop / t / peak:6.0f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
