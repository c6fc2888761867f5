"""Cost of ``milnce eval`` per 1,000 clips, and the cached rerun against the first run, same process.

    python benchmarks/bench_eval.py                   # 6 clips of 3 generated videos, 4 x 32 x 224 x 224 each
    python benchmarks/bench_eval.py --quick           # tiny (8 frames, 32 px): a smoke test
    python benchmarks/bench_eval.py --device cuda --clips 64
    python benchmarks/bench_eval.py --weights s3d_howto100m.pth --vocab s3d_dict.npy

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

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="8 frames at 32 px, 2 windows: a smoke test")
    ap.add_argument("--clips", type=int, default=6, help="clips to evaluate (two per video; default 6)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--weights")
    ap.add_argument("--vocab")
    args = ap.parse_args()

    import milnce
    from conftest import write_checkpoint
    from milnce.eval import EvalSettings, evaluate
    from video_fixtures import make_video

    settings = EvalSettings(num_frames=8, size=32, num_windows=2) if args.quick else EvalSettings()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.weights:
            model = milnce.load_model(args.weights, args.vocab, device=args.device, download=False)
        else:
            model = milnce.load_model(*write_checkpoint(tmp / "ckpt"), device=args.device, download=False)
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


if __name__ == "__main__":
    main()
