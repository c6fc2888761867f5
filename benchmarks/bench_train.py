"""Training throughput: is data loading ever the bottleneck, and what does AMP buy on a GPU?

In one process, on the same model and shapes:
1. the real training loop (decoding in DataLoader worker processes, random crop/flip,
   forward + MIL-NCE + backward + Adam): clips/s per step and the fraction of step time spent
   waiting for data (goal < 5%);
2. the same steps on pre-loaded tensors (no data loading at all): the model's own rate;
   the ratio 1 / 2 is what the pipeline keeps of it (goal ~1);
3. on CUDA: fp32 vs bf16 vs fp16 autocast throughput and peak memory.

    python benchmarks/bench_train.py --quick            # 2-core CPU: seconds
    python benchmarks/bench_train.py --device cuda --batch-size 32 --num-frames 32 --size 224
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes for a busy 2-core CPU")
    ap.add_argument("--data", help="data folder (default: a generated make-synthetic set)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--num-frames", type=int, default=16)
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--fps", type=float, default=4.0)
    ap.add_argument("--steps", type=int, default=10, help="timed steps (after --warmup)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    ap.add_argument("--precisions", default=None, help="comma list (default: fp32 on CPU; fp32,bf16,fp16 on CUDA)")
    args = ap.parse_args()
    if args.quick:
        args.batch_size, args.num_frames, args.size, args.steps, args.warmup = 8, 8, 32, 6, 2
        args.workers = min(args.workers, 1)
    if args.threads:
        torch.set_num_threads(args.threads)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from milnce.model import S3D
    from milnce.text import Tokenizer, load_vocab
    from milnce.train.data import StepBatchSampler, TrainClips, find_data, worker_init
    from milnce.train.loss import milnce_loss
    from milnce.train.synthetic import make_synthetic
    from milnce.train.trainer import init_weights
    from milnce.windows import WindowSettings

    device = torch.device(args.device)
    precisions = (args.precisions.split(",") if args.precisions else
                  (["fp32", "bf16", "fp16"] if device.type == "cuda" else ["fp32"]))
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(args.data) if args.data else make_synthetic(
            Path(tmp) / "data", videos=max(32, args.batch_size * 2), val_videos=0, size=max(64, args.size + args.size // 4),
            progress=False)
        split, _, _ = find_data(str(data), None)
        vocab = load_vocab(data / "vocab.npy")
        tok = Tokenizer(vocab)
        window = WindowSettings(fps=args.fps, num_frames=args.num_frames, size=args.size)
        decode = args.size + 2 * (args.size // 16)
        ds = TrainClips(split, tok, window, seed=0, decode_size=decode, min_time=args.num_frames / args.fps,
                        num_candidates=2, hflip=True)
        total = args.warmup + args.steps
        results: dict[str, dict[str, float]] = {}
        print(f"bench_train: {device}, batch {args.batch_size}, {args.num_frames} x {args.size} px clips, "
              f"{args.workers} worker(s), torch threads {torch.get_num_threads()}", file=sys.stderr)
        for precision in precisions:
            torch.manual_seed(0)
            net = S3D(tok, 512).to(device).train()
            init_weights(net)
            net.text_module.word_embd.weight.requires_grad_(False)
            opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-4)
            amp = (contextlib.nullcontext if precision == "fp32" else
                   (lambda: torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)))
            scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

            def step(clips: torch.Tensor, ids: torch.Tensor) -> None:
                clips = clips.to(device, non_blocking=True).float().div_(255)
                ids = ids.to(device, non_blocking=True).reshape(-1, ids.shape[-1])
                with amp():
                    v = net(clips)["video_embedding"]
                    t = net.text_module.encode_ids(ids)
                loss = milnce_loss(v.float(), t.float())
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                opt.zero_grad(set_to_none=True)

            def sync() -> None:
                if device.type == "cuda":
                    torch.cuda.synchronize()

            # 1. the real pipeline
            loader = torch.utils.data.DataLoader(
                ds, batch_sampler=StepBatchSampler(0, total, args.batch_size, 1, 0, 1), num_workers=args.workers,
                worker_init_fn=worker_init, pin_memory=device.type == "cuda",
                prefetch_factor=4 if args.workers else None)
            it = iter(loader)
            waits, times = [], []
            first = None
            for i in range(total):
                t0 = time.perf_counter()
                batch = next(it)
                t1 = time.perf_counter()
                step(*batch)
                sync()
                t2 = time.perf_counter()
                first = first or batch
                if i >= args.warmup:
                    waits.append(t1 - t0)
                    times.append(t2 - t0)
            del it, loader
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            # 2. the model alone on pre-loaded tensors (the same batch, already in memory)
            pre = [x.to(device) for x in first]
            model_times = []
            for i in range(total):
                t0 = time.perf_counter()
                step(*pre)
                sync()
                if i >= args.warmup:
                    model_times.append(time.perf_counter() - t0)
            b = args.batch_size
            pipe = b * len(times) / sum(times)
            model = b * len(model_times) / sum(model_times)
            rec = {
                "train_clips_per_s": pipe,
                "step_s_median": statistics.median(times),
                "data_wait_fraction": sum(waits) / sum(times),
                "model_clips_per_s": model,
                "train_vs_model": pipe / model,
                "clips_per_s_per_step": [round(b / t, 2) for t in times],
            }
            if device.type == "cuda":
                rec["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
            results[precision] = rec
            print(f"{precision}: training {pipe:.2f} clips/s (median step {rec['step_s_median']:.3f} s), waiting for "
                  f"data {100 * rec['data_wait_fraction']:.1f}% of step time; model alone on pre-loaded tensors "
                  f"{model:.2f} clips/s; ratio {rec['train_vs_model']:.2f}"
                  + (f"; peak memory {rec['peak_memory_gib']:.2f} GiB" if "peak_memory_gib" in rec else ""))
        if "fp32" in results:
            for p in results:
                if p != "fp32":
                    print(f"{p} vs fp32 training throughput: {results[p]['train_clips_per_s'] / results['fp32']['train_clips_per_s']:.2f}x")
        print(json.dumps({"device": str(device), "batch_size": args.batch_size, "num_frames": args.num_frames,
                          "size": args.size, "workers": args.workers, "results": results}))


if __name__ == "__main__":
    main()
