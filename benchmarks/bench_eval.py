"""Cost of ``milnce eval`` per 1,000 clips, and the cached rerun against the first run, same process.

    python benchmarks/bench_eval.py                   # 6 clips of 3 generated videos, 4 x 32 x 224 x 224 each
    python benchmarks/bench_eval.py --quick           # tiny (8 frames, 32 px): a smoke test
    python benchmarks/bench_eval.py --device cuda --clips 64
    python benchmarks/bench_eval.py --weights s3d_howto100m.pth --vocab s3d_dict.npy
    python benchmarks/bench_eval.py --crosstask --seconds 30 --videos 2   # CrossTask: cost per video-hour, DP share

``--crosstask``: a miniature CrossTask release (generated 640x360 videos, two tasks of 8 and 11
steps) through ``evaluate_crosstask`` (one window per second, the model, both DP decodings and
the argmax): prints the cost per video-hour (seconds of compute per hour of video) and the DP's
share of the total (target < 1 %), and the DP alone on a 5-minute, 11-step matrix beside the
embedding time of its 300 positions at the measured rate.

Builds a miniature YouCook2 (generated 640x360 videos, two clips each) and runs the real
evaluation (extraction pipeline, model, metrics) twice with one cache: prints seconds per clip
and the extrapolation to 1,000 clips for the first run, and the ratio rerun / first run.
Random weights unless ``--weights``: the cost does not depend on the weights' values.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def _model(args: argparse.Namespace, tmp: Path) -> Any:
    """``--weights``/``--vocab`` when given, else a small random checkpoint written into ``tmp``."""
    import milnce
    from conftest import write_checkpoint

    if args.weights:
        return milnce.load_model(args.weights, args.vocab, device=args.device, download=False)
    return milnce.load_model(*write_checkpoint(tmp / "ckpt"), device=args.device, download=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="8 frames at 32 px, 2 windows: a smoke test")
    ap.add_argument("--clips", type=int, default=6, help="clips to evaluate (two per video; default 6)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--weights")
    ap.add_argument("--vocab")
    ap.add_argument("--crosstask", action="store_true", help="measure CrossTask instead of YouCook2")
    ap.add_argument("--seconds", type=int, default=30, help="CrossTask: seconds per generated video (default 30)")
    ap.add_argument("--videos", type=int, default=2, help="CrossTask: generated videos (default 2)")
    args = ap.parse_args()
    if args.crosstask:
        crosstask(args)
        return

    from milnce.eval import EvalSettings, evaluate
    from video_fixtures import make_video

    settings = EvalSettings(num_frames=8, size=32, num_windows=2) if args.quick else EvalSettings()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = _model(args, tmp)
        root = tmp / "yc" / "validation" / "101"
        root.mkdir(parents=True)
        n_videos = max(1, (args.clips + 1) // 2)
        w, h = (64, 48) if args.quick else (640, 360)
        rows = []
        for v in range(n_videos):
            make_video(root / f"vid{v}.mp4", n=200, rate=25, width=w, height=h)  # 8 s
            rows += [(4, 0, "101", "cut tomato", f"vid{v}"), (8, 3, "101", "add salt", f"vid{v}")]
        rows = rows[: args.clips]
        csv = tmp / "yc.csv"
        csv.write_text("end,start,task,text,video_id\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
        times = []
        for _ in range(2):
            t0 = time.perf_counter()
            res = evaluate(model, "youcook2", tmp / "yc", annotations=csv, settings=settings, cache=tmp / "cache",
                           workers=args.workers, batch_size=args.batch_size)
            times.append(time.perf_counter() - t0)
            assert res.counts["evaluated"] == len(rows), res.counts
    n = len(rows)
    print(f"device {args.device}, torch threads {__import__('torch').get_num_threads()}, {n} clips, "
          f"{settings.num_windows} windows of {settings.num_frames} x {settings.size} x {settings.size} each")
    print(f"first run:  {times[0]:.2f} s = {times[0] / n:.3f} s/clip -> {times[0] / n * 1000 / 60:.1f} min per 1,000 clips")
    print(f"cached rerun: {times[1]:.3f} s; ratio rerun / first run = {times[1] / times[0]:.4f}")


def crosstask(args: argparse.Namespace) -> None:
    import numpy as np

    from milnce.eval import EvalSettings
    from milnce.eval.crosstask_run import evaluate_crosstask, log_softmax_cost
    from milnce.eval.dp import assign_steps
    from video_fixtures import make_video

    settings = (EvalSettings(num_windows=1, num_frames=8, size=32) if args.quick else EvalSettings(num_windows=1))
    steps = {"10001": [f"step {k} cut tomato" for k in range(8)], "10002": [f"add salt {k}" for k in range(11)]}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = _model(args, tmp)
        rel, vids = tmp / "crosstask_release", tmp / "videos"
        (rel / "annotations").mkdir(parents=True)
        vids.mkdir()
        (rel / "tasks_primary.txt").write_text("".join(f"{t}\nTask {t}\nhttps://x\n{len(s)}\n{','.join(s)}\n\n"
                                                       for t, s in steps.items()))
        w, h = (64, 48) if args.quick else (640, 360)
        rows = []
        for v in range(args.videos):
            task = list(steps)[v % 2]
            make_video(vids / f"v{v}.mp4", n=args.seconds * 25, rate=25, width=w, height=h)
            rows.append(f"{task},v{v},https://y\n")
            (rel / "annotations" / f"{task}_v{v}.csv").write_text("".join(
                f"{k + 1},{k * args.seconds / len(steps[task]):.2f},{(k + 0.5) * args.seconds / len(steps[task]):.2f}\n"
                for k in range(len(steps[task]))))
        (rel / "videos_val.csv").write_text("".join(rows))
        t0 = time.perf_counter()
        res = evaluate_crosstask(model, vids, rel, settings=settings, cache=False, workers=args.workers,
                                 batch_size=args.batch_size)
        total = time.perf_counter() - t0
    assert res.counts["evaluated"] == args.videos, res.counts
    hours = args.videos * args.seconds / 3600
    positions = res.counts["positions"]
    dp_s = res.info["dp_seconds"]
    print(f"device {args.device}, torch threads {__import__('torch').get_num_threads()}, {args.videos} videos x "
          f"{args.seconds} s, {positions} positions, windows of {settings.num_frames} x {settings.size} x {settings.size}")
    print(f"CrossTask: {total:.2f} s = {total / hours / 3600:.2f} s of compute per second of video "
          f"-> {total / hours / 3600:.2f} h per video-hour")
    print(f"DP (two decodings + argmax): {dp_s * 1000:.1f} ms = {100 * dp_s / total:.3f} % of the total")
    rng = np.random.default_rng(0)
    cost = log_softmax_cost(rng.standard_normal((300, 11)))
    t0 = time.perf_counter()
    for _ in range(5):
        assign_steps(cost)
    one = (time.perf_counter() - t0) / 5
    per_position = total / positions
    print(f"DP alone, 300 positions x 11 steps: {one * 1000:.2f} ms; embedding 300 positions at this run's rate: "
          f"{300 * per_position:.1f} s; ratio DP / embedding = {one / (300 * per_position):.5f}")


if __name__ == "__main__":
    main()
