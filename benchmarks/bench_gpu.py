"""GPU check and benchmark: every CUDA path against float64 on the device, then clips/s of each
path and the extraction pipeline end to end, printing ratios (same process, same card).

    python benchmarks/bench_gpu.py --quick      # < 5 min on an H100: batch 64, 32x224x224, 3 rounds,
                                                # 4 x 10 s 720p videos for the pipeline
    python benchmarks/bench_gpu.py              # 5 rounds, 8 x 30 s videos
    python benchmarks/bench_gpu.py --dry-run    # no GPU: tiny shapes on the CPU (tests the script)

1. Accuracy: the published network in float64 on the device is the reference; the port (eager
   fp32), the fast path (fp32, bf16) and the port under autocast bf16 are compared with TF32
   convolutions/matmuls on (PyTorch's default for convolutions) and off.
2. Speed at batch 64, 32 x 224 x 224 (``cudnn.benchmark`` on for all): eager fp32 (the port),
   eager + autocast bf16 + channels_last, fast fp32, fast bf16, fast bf16 replayed as a CUDA
   graph. Ratios against the port fp32 and against the port with autocast + channels_last.
3. Extraction: ``run_jobs`` on generated H.264 videos (worker processes decode, fast bf16 model)
   against min(model bound, decode-only rate with the same workers).
Random weights (speed does not depend on them).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from bench_extract import NullModel, bench_pipeline, make_videos, random_model  # noqa: E402
from milnce.api import MILNCE  # noqa: E402
from milnce.fast import FastVideoNet  # noqa: E402
from milnce.windows import WindowSettings  # noqa: E402

CL = torch.channels_last_3d
Fn = Callable[[torch.Tensor], dict[str, torch.Tensor]]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--frames", type=int, default=32)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--check-batch", type=int, default=4, help="clips in the float64 accuracy check")
    p.add_argument("--videos", type=int, default=8, help="videos for the pipeline run")
    p.add_argument("--seconds", type=float, default=30.0, help="length of each generated video")
    p.add_argument("--workers", type=int, default=None, help="decoding processes (default: cores - 1)")
    p.add_argument("--no-graphs", action="store_true", help="skip the CUDA graph path")
    p.add_argument("--skip-pipeline", action="store_true")
    p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "milnce-bench-gpu"))
    p.add_argument("--quick", action="store_true", help="3 rounds, 4 x 10 s videos (< 5 min on an H100)")
    p.add_argument("--dry-run", action="store_true", help="no GPU needed: tiny shapes on the CPU")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.videos, args.seconds = 3, 4, 10.0
    if args.dry_run:
        args.batch, args.frames, args.size, args.rounds, args.check_batch = 2, 8, 32, 1, 1
        args.videos, args.seconds, args.no_graphs = 1, 1.5, True
        args.workers = 0 if args.workers is None else args.workers
    for name in ("batch", "frames", "size", "rounds", "check_batch", "videos"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def set_tf32(on: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on


def build_paths(net: torch.nn.Module, device: torch.device, batch: int, shape: tuple[int, ...],
                graphs: bool) -> dict[str, Fn]:
    """Every inference path, keyed by name (the port = the eager network)."""
    fast32 = FastVideoNet(net, precision="fp32")
    fast16 = FastVideoNet(net, precision="bf16")
    net_cl = copy.deepcopy(net).to(memory_format=CL)

    def amp(v: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            return net_cl(v.contiguous(memory_format=CL))

    paths: dict[str, Fn] = {"port fp32": net, "port autocast bf16 + channels_last": amp,
                            "fast fp32": fast32, "fast bf16": fast16}
    if graphs and device.type == "cuda":
        try:
            paths["fast bf16 + CUDA graph"] = cuda_graph(fast16, (batch, *shape), device)
        except Exception as exc:  # report, keep benchmarking the rest
            print(f"  CUDA graph capture failed: {type(exc).__name__}: {exc}")
    return paths


def cuda_graph(fn: Fn, shape: tuple[int, ...], device: torch.device) -> Fn:
    """``fn`` captured once for a fixed input shape and replayed (the input is copied in)."""
    static_x = torch.rand(shape, device=device)
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.inference_mode(), torch.cuda.stream(stream):
        for _ in range(3):  # warm-up outside the capture (cudnn.benchmark picks its algorithms here)
            fn(static_x)
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.inference_mode(), torch.cuda.graph(graph):
        static_out = fn(static_x)

    def run(x: torch.Tensor) -> dict[str, torch.Tensor]:
        static_x.copy_(x, non_blocking=True)
        graph.replay()
        return static_out

    return run


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


def check_accuracy(net: torch.nn.Module, device: torch.device, x: torch.Tensor) -> list[tuple[str, bool, float, float]]:
    """Relative max error of each path against float64 on the device, TF32 on and off."""
    ref_net = copy.deepcopy(net).double()
    with torch.inference_mode():
        ref = ref_net(x.double())
    del ref_net
    rows = []
    for tf32 in ((True, False) if device.type == "cuda" else (True,)):  # TF32 exists on CUDA only
        set_tf32(tf32)
        paths = build_paths(net, device, x.shape[0], tuple(x.shape[1:]), graphs=False)
        with torch.inference_mode():
            for name, fn in paths.items():
                out = fn(x)
                rows.append((name, tf32, rel_err(out["video_embedding"].float(), ref["video_embedding"]),
                             rel_err(out["mixed_5c"].float(), ref["mixed_5c"])))
    set_tf32(False)
    torch.backends.cudnn.allow_tf32 = True  # PyTorch's defaults
    return rows


def time_paths(paths: dict[str, Fn], x: torch.Tensor, device: torch.device, rounds: int) -> dict[str, float]:
    """Median seconds per batch of each path, interleaved rounds (noise hits every path alike)."""
    times: dict[str, list[float]] = {k: [] for k in paths}
    with torch.inference_mode():
        for fn in paths.values():  # warm-up: cudnn.benchmark tuning, allocator
            fn(x)
            fn(x)
        _sync(device)
        for _ in range(rounds):
            for name, fn in paths.items():
                _sync(device)
                t = time.perf_counter()
                out = fn(x)
                out["video_embedding"].float().sum().item()
                times[name].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("bench_gpu.py needs a CUDA GPU (torch.cuda.is_available() is False here); "
              "run it on a GPU machine, or pass --dry-run to exercise it on the CPU", file=sys.stderr)
        return 2
    device = torch.device("cuda" if not args.dry_run else "cpu")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        print(f"device {torch.cuda.get_device_name(device)}, torch {torch.__version__}, cudnn "
              f"{torch.backends.cudnn.version()}", flush=True)
    else:
        print(f"dry run on the CPU, torch {torch.__version__}", flush=True)
    model = random_model("cpu", "fp32", fast=False)
    net = model.net.to(device).eval()
    shape = (3, args.frames, args.size, args.size)
    gen = torch.Generator(device="cpu").manual_seed(0)

    print(f"\n1. accuracy against float64 on the device ({args.check_batch} clips {args.frames}x{args.size}x{args.size})")
    xc = torch.rand((args.check_batch, *shape), generator=gen).to(device)
    print(f"  {'path':36s} {'TF32':>5s} {'embedding':>10s} {'mixed_5c':>10s}   (max |err| / max |ref|)")
    for name, tf32, e1, e2 in check_accuracy(net, device, xc):
        print(f"  {name:36s} {'on' if tf32 else 'off':>5s} {e1:10.2e} {e2:10.2e}", flush=True)
    del xc

    gflop = 74.2 * args.batch * (args.frames / 32) * (args.size / 224) ** 2
    print(f"\n2. speed, batch {args.batch} x {args.frames}x{args.size}x{args.size} (TF32 convolutions on, "
          f"cudnn.benchmark on), median of {args.rounds} interleaved rounds")
    x = torch.rand((args.batch, *shape), generator=gen).to(device)
    paths = build_paths(net, device, args.batch, shape, graphs=not args.no_graphs)
    med = time_paths(paths, x, device, args.rounds)
    base, amp = med["port fp32"], med["port autocast bf16 + channels_last"]
    print(f"  {'path':36s} {'clips/s':>9s} {'TFLOP/s':>8s} {'x port':>7s} {'x port+AMP':>10s}")
    for name, t in med.items():
        print(f"  {name:36s} {args.batch / t:9.1f} {gflop / t / 1000:8.2f} {base / t:7.2f} {amp / t:10.2f}", flush=True)
    best = min((t, n) for n, t in med.items() if n.startswith("fast"))
    print(f"  best fast path: {best[1]}: {base / best[0]:.2f}x the port fp32, {amp / best[0]:.2f}x the port with "
          "autocast + channels_last (targets: 2x and 1.25x)")
    del x, paths

    if not args.skip_pipeline:
        from milnce.extract import default_workers

        workers = default_workers() if args.workers is None else args.workers
        s = WindowSettings(fps=10.0, num_frames=args.frames, size=args.size, stride=max(1, args.frames // 2))
        w, h = (1280, 720) if not args.dry_run else (96, 64)
        print(f"\n3. extraction: {args.videos} x {args.seconds:g} s {w}x{h} H.264, {workers} decoding workers, "
              f"batch {args.batch}, fast bf16", flush=True)
        videos = make_videos(Path(args.workdir), args.videos, args.seconds, w, h)
        m = MILNCE(net, fast=True, precision="bf16")
        bench_pipeline(m, videos[:1], s, args.batch, workers)  # warm-up: worker server, cudnn tuning
        clips_s = args.batch / med["fast bf16"]
        bound = clips_s * s.hop
        dur, t, n, _ = bench_pipeline(NullModel(), videos, s, args.batch, workers)
        decode = dur / t
        dur, t, n, st = bench_pipeline(m, videos, s, args.batch, workers)
        rate = dur / t
        print(f"  model bound (fast bf16 {clips_s:.0f} clips/s x {s.hop:g} s hop) {bound:9.1f} video-s/s")
        print(f"  decode only ({workers} workers)                       {decode:9.1f} video-s/s")
        print(f"  extraction end to end                          {rate:9.1f} video-s/s ({n / t:.0f} windows/s; "
              f"the model waited {st['wait_s']:.1f} of {st['wall_s']:.1f} s)")
        print(f"  extraction / min(bound, decode) = {rate / min(bound, decode):.3f} (target >= 0.8)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
