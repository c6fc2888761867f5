"""Decoding capacity of this machine against what the extraction pipeline gets out of it.

    python benchmarks/bench_decode.py                    # 16 x 15 s 720p H.264, workers 1, half, all
    python benchmarks/bench_decode.py --videos 4 --seconds 10 --width 320 --height 240   # quick

For each number of workers N: video-seconds per wall-second of

* ``raw``: N independent processes, each decoding its share of the videos into windows
  (``JobDecoder``, one thread each: the pipeline's own decoder), nothing else running; started
  before the clock, so this is the machine's decoding capacity with N cores;
* ``pipeline``: ``run_jobs`` with N decoding workers and a model that does nothing (shared-memory
  ring, queues, batching, worker start-up included),

and pipeline / raw (the pipeline's own overhead; the extraction target is >= 0.8 of the decode
rate where decoding, not the model, is the bound, e.g. on a GPU machine). ``start-up``: seconds
until the first decoded window reached the model side (process start, imports, first window);
``after start-up``: the pipeline's rate from then on (what a long run converges to; the first
window's own decoding time counts as start-up, so this slightly favours the pipeline).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from bench_extract import NullModel, bench_pipeline, make_videos  # noqa: E402
from milnce.extract import default_workers  # noqa: E402
from milnce.windows import WindowSettings  # noqa: E402


def _decode_share(paths: list[str], settings: dict, go: object, out: object) -> None:
    import torch

    from milnce.video.sources import JobDecoder

    torch.set_num_threads(1)
    s = WindowSettings.from_dict(settings)
    go.wait()  # type: ignore[attr-defined]
    dur = 0.0
    for p in paths:
        dec = JobDecoder(p, s, "repeat", threads=1)
        for _ in dec:
            pass
        dur += dec.duration or 0.0
    out.put(dur)  # type: ignore[attr-defined]


def raw_rate(videos: list[Path], s: WindowSettings, n: int) -> float:
    """N processes decode the videos (round-robin shares) at the same time: video-s per wall-s."""
    ctx = mp.get_context("spawn")
    go, out = ctx.Event(), ctx.Queue()
    shares = [[str(v) for v in videos[i::n]] for i in range(n)]
    procs = [ctx.Process(target=_decode_share, args=(sh, s.to_dict(), go, out)) for sh in shares if sh]
    for p in procs:
        p.start()
    time.sleep(3.0 + 0.2 * len(procs))  # let every process import and reach the start line
    t = time.perf_counter()
    go.set()
    total = sum(out.get() for _ in procs)
    wall = time.perf_counter() - t
    for p in procs:
        p.join()
    return total / wall


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=int, default=16)
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--workers", default=None, help="comma-separated worker counts (default: 1, half, all)")
    p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "milnce-bench-decode"))
    args = p.parse_args(argv)
    full = default_workers()
    counts = [int(x) for x in args.workers.split(",")] if args.workers else sorted({1, max(1, full // 2), full})
    s = WindowSettings(fps=10.0, num_frames=32, size=224, stride=16)
    videos = make_videos(Path(args.workdir), args.videos, args.seconds, args.width, args.height, jobs=os.cpu_count() or 1)
    print(f"{args.videos} x {args.seconds:g} s {args.width}x{args.height} H.264, windows 32 x 224 at 10 fps, "
          f"{os.cpu_count()} CPUs", flush=True)
    print(f"  {'workers':>7s} {'raw':>9s} {'pipeline':>9s} {'pipeline/raw':>12s} {'start-up s':>10s} "
          f"{'after start-up/raw':>18s}   (video-s per wall-s)")
    for n in counts:
        raw = raw_rate(videos, s, n)
        dur, t, _, st = bench_pipeline(NullModel(), videos, s, 64, n)
        after = dur / max(1e-9, t - st["first_window_s"])
        print(f"  {n:7d} {raw:9.1f} {dur / t:9.1f} {dur / t / raw:12.2f} {st['first_window_s']:10.2f} "
              f"{after / raw:18.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
