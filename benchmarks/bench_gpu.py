"""GPU check and benchmark: every CUDA path against float64 on the device, then clips/s of each
path and the extraction pipeline end to end, printing ratios (same process, same card).

    python benchmarks/bench_gpu.py --quick      # ~4 min on an H100/H200: batch 64, 32x224x224,
                                                # 3 rounds, 8 x 60 s 720p videos, no torch.compile
    python benchmarks/bench_gpu.py              # 5 rounds and torch.compile (~1 min to compile)
    python benchmarks/bench_gpu.py --dry-run    # no GPU: tiny shapes on the CPU (tests the script)

Random weights with batch-norm calibrated on real video (``benchmarks/_alive.py``), inputs are
real clips (``tests/data/real_clips.mp4``), so precision is measured where the network works.

1. Accuracy: the network in float64 on the device is the reference; the port (eager fp32), the
   port under autocast bf16 + channels_last and the fast path (fp32; bf16 with each CUDA variant)
   are compared with TF32 convolutions/matmuls on (PyTorch's default for convolutions) and off.
   Then every bf16 variant at the full batch against the port fp32 without TF32 (cuDNN has had
   large-shape bf16 conv3d bugs).
2. Speed at batch 64, 32 x 224 x 224 (``cudnn.benchmark`` on for all), median of interleaved
   rounds: the port fp32, the port + autocast bf16 + channels_last, fast fp32, fast bf16 with its
   CUDA variants (``cuda_conv``: F.conv3d + ReLU or cuDNN's fused conv+bias+ReLU; ``cuda_pool``:
   separable or F.max_pool3d), the best replayed as a CUDA graph, and ``torch.compile`` of it
   (when the time budget allows). Ratios against the port fp32 and against the port + autocast.
3. Extraction: ``run_jobs`` on generated H.264 720p videos (8 x 60 s: fewer videos than cores,
   so long videos are split across decoders) against min(model bound, decode-only rate through
   the same pipeline and workers); also one decoder thread alone, and decoding with one decoder
   per video (no splitting).

``--json FILE`` also writes every number as JSON.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from _alive import random_net, real_batch  # noqa: E402
from bench_extract import NullModel, bench_pipeline, make_videos  # noqa: E402
from milnce.api import MILNCE  # noqa: E402
from milnce.fast import FastVideoNet  # noqa: E402
from milnce.windows import WindowSettings  # noqa: E402

CL = torch.channels_last_3d
Fn = Callable[[torch.Tensor], dict[str, torch.Tensor]]
VARIANTS = {  # name -> FastVideoNet keyword arguments (bf16); the first is the default
    "fast bf16": {},
    "fast bf16 conv+relu": {"cuda_conv": "conv+relu"},
    "fast bf16 native-pool": {"cuda_pool": "native"},
}
T0 = time.perf_counter()
RESULTS: dict[str, Any] = {}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--frames", type=int, default=32)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--iters", type=int, default=3, help="model calls per timed round")
    p.add_argument("--check-batch", type=int, default=4, help="clips in the float64 accuracy check")
    p.add_argument("--videos", type=int, default=8, help="videos for the pipeline run")
    p.add_argument("--seconds", type=float, default=60.0, help="length of each generated video")
    p.add_argument("--workers", type=int, default=None, help="decoding processes (default: cores - 1)")
    p.add_argument("--no-graphs", action="store_true", help="skip the CUDA graph path")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    p.add_argument("--skip-pipeline", action="store_true")
    p.add_argument("--budget", type=float, default=420.0,
                   help="seconds: optional stages (torch.compile) are skipped once the run is past this")
    p.add_argument("--json", default=None, help="also write the numbers to this file")
    p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "milnce-bench-gpu"))
    p.add_argument("--quick", action="store_true", help="3 rounds, no torch.compile (~4 min on an H100)")
    p.add_argument("--dry-run", action="store_true", help="no GPU needed: tiny shapes on the CPU")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.no_compile = 3, True
    if args.dry_run:
        args.batch, args.frames, args.size, args.rounds, args.iters, args.check_batch = 2, 8, 32, 1, 1, 1
        args.videos, args.seconds, args.no_graphs, args.no_compile = 2, 1.5, True, True
        args.workers = 0 if args.workers is None else args.workers
    for name in ("batch", "frames", "size", "rounds", "iters", "check_batch", "videos"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:6.1f}s] {msg}", flush=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def set_tf32(on: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on


def port_amp(net: torch.nn.Module, device: torch.device) -> Fn:
    """The port under autocast bf16 with channels_last_3d (the best a user gets without milnce)."""
    net_cl = copy.deepcopy(net).to(memory_format=CL)

    def amp(v: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            return net_cl(v.contiguous(memory_format=CL))

    return amp


def build_paths(net: torch.nn.Module, device: torch.device, variants: bool = True) -> dict[str, Fn]:
    """Every inference path, keyed by name (the port = the eager network)."""
    paths: dict[str, Fn] = {"port fp32": net, "port autocast bf16 + channels_last": port_amp(net, device),
                            "fast fp32": FastVideoNet(net, precision="fp32"),
                            "fast fp32 conv+relu": FastVideoNet(net, precision="fp32", cuda_conv="conv+relu")}
    for name, kw in VARIANTS.items():
        if variants or not kw:
            paths[name] = FastVideoNet(net, precision="bf16", **kw)
    return paths


def cuda_graph(fn: Fn, x: torch.Tensor) -> Fn:
    """``fn`` captured once for ``x``'s shape and replayed (the input is copied in)."""
    device = x.device
    static_x = x.clone()
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.inference_mode(), torch.cuda.stream(stream):
        for _ in range(3):  # warm-up outside the capture (cudnn.benchmark picks its algorithms here)
            fn(static_x)
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.inference_mode(), torch.cuda.graph(graph):
        static_out = fn(static_x)

    def run(v: torch.Tensor) -> dict[str, torch.Tensor]:
        static_x.copy_(v, non_blocking=True)
        graph.replay()
        return static_out

    return run


def errors(out: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> dict[str, float]:
    """Max error relative to the largest reference value, and the smallest cosine, per output."""
    res = {}
    for key in ("video_embedding", "mixed_5c"):
        a, r = out[key].double(), ref[key].double()
        res[key] = float((a - r).abs().max() / r.abs().max().clamp_min(1e-30))
        res[key + " cos"] = float(torch.nn.functional.cosine_similarity(a, r, dim=1).min())
    return res


def check_accuracy(net: torch.nn.Module, device: torch.device, x: torch.Tensor) -> list[dict[str, Any]]:
    """Every path against float64 on the device, TF32 on and off."""
    ref_net = copy.deepcopy(net).double()
    with torch.inference_mode():
        ref = ref_net(x.double())
    del ref_net
    rows = []
    for tf32 in ((True, False) if device.type == "cuda" else (True,)):  # TF32 exists on CUDA only
        set_tf32(tf32)
        for name, fn in build_paths(net, device).items():
            if "bf16" in name and not tf32:
                continue  # bf16 convolutions do not use TF32
            try:
                with torch.inference_mode():
                    rows.append({"path": name, "tf32": tf32, **errors(fn(x), ref)})
            except Exception as exc:  # report, check the rest
                rows.append({"path": name, "tf32": tf32, "error": f"{type(exc).__name__}: {exc}"})
    set_tf32(False)
    torch.backends.cudnn.allow_tf32 = True  # PyTorch's defaults
    return rows


def time_paths(paths: dict[str, Fn], x: torch.Tensor, device: torch.device, rounds: int, iters: int) -> dict[str, float]:
    """Median seconds per batch of each path, interleaved rounds (noise hits every path alike)."""
    times: dict[str, list[float]] = {k: [] for k in paths}
    with torch.inference_mode():
        for name, fn in list(paths.items()):  # warm-up: cudnn.benchmark tuning, allocator
            try:
                fn(x)
                fn(x)
            except Exception as exc:
                log(f"  {name} failed: {type(exc).__name__}: {exc}")
                del paths[name], times[name]
        _sync(device)
        for _ in range(rounds):
            for name, fn in paths.items():
                _sync(device)
                t = time.perf_counter()
                for _ in range(iters):
                    out = fn(x)
                out["video_embedding"].float().sum().item()
                times[name].append((time.perf_counter() - t) / iters)
    return {k: statistics.median(v) for k, v in times.items()}


def print_speed(med: dict[str, float], batch: int, gflop: float) -> None:
    base, amp = med["port fp32"], med["port autocast bf16 + channels_last"]
    print(f"  {'path':40s} {'clips/s':>9s} {'TFLOP/s':>8s} {'x port':>7s} {'x port+AMP':>10s}")
    for name, t in med.items():
        print(f"  {name:40s} {batch / t:9.1f} {gflop / t / 1000:8.2f} {base / t:7.2f} {amp / t:10.2f}", flush=True)
    RESULTS["speed"] = {n: {"clips_per_s": batch / t, "x_port": base / t, "x_port_amp": amp / t} for n, t in med.items()}


def stage_compile(fast: FastVideoNet, x: torch.Tensor, device: torch.device, rounds: int, iters: int,
                  ref: dict[str, torch.Tensor]) -> dict[str, float]:
    """``torch.compile`` of the fast path (default mode): compile time, then timed like the rest."""
    t = time.perf_counter()
    compiled = torch.compile(fast.run)
    with torch.inference_mode():
        out = compiled(x)
        _sync(device)
    took = time.perf_counter() - t
    err = errors(out, ref)
    log(f"  compiled in {took:.0f} s; max rel error vs the port fp32 (no TF32): {err['video_embedding']:.2e}")
    RESULTS["compile"] = {"compile_s": took, **err}
    return time_paths({"fast bf16 + torch.compile": compiled}, x, device, rounds, iters)


def decode_rate_one_core(video: Path, s: WindowSettings, seconds: float) -> float:
    """Video-seconds per second one decoder thread gives on this machine (the first ``seconds``)."""
    from milnce.video.sources import JobDecoder

    t = time.perf_counter()
    for _ in JobDecoder(str(video), s, "repeat", end=seconds, threads=1):
        pass
    return seconds / (time.perf_counter() - t)


def stage_pipeline(args: argparse.Namespace, net: torch.nn.Module, clips_s: float) -> None:
    from milnce.extract import default_workers

    workers = default_workers() if args.workers is None else args.workers
    s = WindowSettings(fps=10.0, num_frames=args.frames, size=args.size, stride=max(1, args.frames // 2))
    w, h = (1280, 720) if not args.dry_run else (96, 64)
    log(f"3. extraction: {args.videos} x {args.seconds:g} s {w}x{h} H.264, {workers} decoding workers, "
        f"batch {args.batch}, fast bf16")
    videos = make_videos(Path(args.workdir), args.videos, args.seconds, w, h, jobs=os.cpu_count() or 1)
    one = decode_rate_one_core(videos[0], s, min(args.seconds, 20.0))
    log(f"  videos ready; one decoder thread: {one:.1f} video-s/s")
    m = MILNCE(net, fast=True, precision="bf16")
    bench_pipeline(m, videos[:2], s, args.batch, workers)  # warm-up: worker server, cudnn tuning
    bound = clips_s * s.hop
    runs = {}
    for name, model, kw in (("decode only, one decoder per video", NullModel(), {"min_part_s": 1e9}),
                            ("decode only", NullModel(), {}),
                            ("extraction end to end", m, {})):
        dur, t, n, st = bench_pipeline(model, videos, s, args.batch, workers, **kw)
        runs[name] = {"rate": dur / t, "windows_per_s": n / t, **st}
    decode = runs["decode only"]["rate"]
    rate = runs["extraction end to end"]["rate"]
    print(f"  one decoder thread (x {workers} workers = {one * max(1, workers):.0f})  {one:9.1f} video-s/s")
    print(f"  model bound ({clips_s:.0f} clips/s x {s.hop:g} s hop)   {bound:9.1f} video-s/s")
    for name, r in runs.items():
        print(f"  {name:38s} {r['rate']:9.1f} video-s/s ({r['windows_per_s']:.0f} windows/s, {r['parts']:.0f} parts, "
              f"model waited {r['wait_s']:.1f} of {r['wall_s']:.1f} s)")
    print(f"  extraction / min(bound, decode) = {rate / min(bound, decode):.3f} (target >= 0.8); decode through the "
          f"pipeline / ({workers} x one thread) = {decode / (one * max(1, workers)):.2f}", flush=True)
    RESULTS["pipeline"] = {"workers": workers, "one_thread": one, "bound": bound, "runs": runs,
                           "ratio": rate / min(bound, decode)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("bench_gpu.py needs a CUDA GPU (torch.cuda.is_available() is False here); "
              "run it on a GPU machine, or pass --dry-run to exercise it on the CPU", file=sys.stderr)
        return 2
    device = torch.device("cuda" if not args.dry_run else "cpu")
    try:
        return _main(args, device)
    finally:
        if args.json:
            Path(args.json).write_text(json.dumps(RESULTS, indent=1, default=str))


def _main(args: argparse.Namespace, device: torch.device) -> int:
    info = {"torch": torch.__version__, "cpus": os.cpu_count()}
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        info.update(gpu=torch.cuda.get_device_name(device), cudnn=torch.backends.cudnn.version())
    RESULTS["info"] = info
    log(f"device {info.get('gpu', 'CPU (dry run)')}, {info}")
    net = random_net().to(device).eval()

    log(f"1. accuracy against float64 on the device ({args.check_batch} real clips {args.frames}x{args.size}x{args.size})")
    xc = real_batch(args.check_batch, args.frames, args.size).to(device)
    rows = check_accuracy(net, device, xc)
    RESULTS["accuracy"] = rows
    print(f"  {'path':40s} {'TF32':>5s} {'embedding':>10s} {'mixed_5c':>10s} {'min cos':>9s}   (max |err| / max |ref|)")
    for r in rows:
        if "error" in r:
            print(f"  {r['path']:40s} {'on' if r['tf32'] else 'off':>5s}  FAILED {r['error']}")
        else:
            print(f"  {r['path']:40s} {'on' if r['tf32'] else 'off':>5s} {r['video_embedding']:10.2e} "
                  f"{r['mixed_5c']:10.2e} {r['video_embedding cos']:9.5f}")
    del xc

    x = real_batch(args.batch, args.frames, args.size).to(device)
    log(f"   full batch {args.batch}: bf16 variants against the port fp32 without TF32")
    set_tf32(False)
    with torch.inference_mode():
        ref32 = {k: v.clone() for k, v in net(x).items()}
    torch.backends.cudnn.allow_tf32 = True
    paths = build_paths(net, device)
    full = {}
    with torch.inference_mode():
        for name in VARIANTS:
            try:
                full[name] = errors(paths[name](x), ref32)
                print(f"  {name:40s} {full[name]['video_embedding']:10.2e} {full[name]['mixed_5c']:10.2e} "
                      f"{full[name]['video_embedding cos']:9.5f}", flush=True)
            except Exception as exc:
                print(f"  {name:40s} FAILED {type(exc).__name__}: {exc}")
    RESULTS["accuracy_full_batch"] = full

    gflop = 74.2 * args.batch * (args.frames / 32) * (args.size / 224) ** 2
    log(f"2. speed, batch {args.batch} x {args.frames}x{args.size}x{args.size} (TF32 convolutions on, cudnn.benchmark "
        f"on), median of {args.rounds} interleaved rounds of {args.iters} calls")
    med = time_paths(paths, x, device, args.rounds, args.iters)
    fast_names = [n for n in med if n in VARIANTS and n in full]
    best = min(fast_names, key=lambda n: med[n])
    if not args.no_graphs and device.type == "cuda":
        for name in dict.fromkeys(["fast bf16", best]):
            try:
                g = cuda_graph(paths[name].run, x)  # type: ignore[union-attr]
                med.update(time_paths({f"{name} + CUDA graph": g}, x, device, args.rounds, args.iters))
            except Exception as exc:  # report, keep benchmarking the rest
                log(f"  CUDA graph of {name} failed: {type(exc).__name__}: {exc}")
    print_speed(med, args.batch, gflop)
    top = min((t, n) for n, t in med.items() if n.startswith("fast"))
    base, amp = med["port fp32"], med["port autocast bf16 + channels_last"]
    print(f"  best fast path: {top[1]}: {base / top[0]:.2f}x the port fp32, {amp / top[0]:.2f}x the port with "
          "autocast + channels_last (targets: 2x and 1.25x)", flush=True)
    RESULTS["best"] = {"path": top[1], "x_port": base / top[0], "x_port_amp": amp / top[0], "best_variant": best}
    del x, paths
    if device.type == "cuda":
        torch.cuda.empty_cache()

    if not args.skip_pipeline:
        stage_pipeline(args, net, args.batch / med["fast bf16"])
    if not args.no_compile and time.perf_counter() - T0 < args.budget * 0.6:
        log(f"4. torch.compile of {best}")
        x = real_batch(args.batch, args.frames, args.size).to(device)
        fast = FastVideoNet(net, precision="bf16", **VARIANTS[best])
        try:
            med.update(stage_compile(fast, x, device, args.rounds, args.iters, ref32))
            print_speed(med, args.batch, gflop)
        except Exception as exc:
            log(f"  torch.compile failed: {type(exc).__name__}: {exc}")
            traceback.print_exc(limit=3)
    elif not args.no_compile:
        log("4. torch.compile skipped: past the time budget")
    log("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
