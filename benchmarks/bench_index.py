"""Indexing throughput: ``build_index`` (``milnce index``: the extraction pipeline, decoding
processes and windows of several videos per model call) against the one-video-at-a-time path it
replaced (``encode_video_file`` per video, then ``Index.add_video``), same process, same videos,
same windows.

    python benchmarks/bench_index.py --quick      # 6 x 8 s 320x240, 16 x 112 x 112 (smoke test)
    python benchmarks/bench_index.py              # 6 x 20 s 640x360, 32 x 224 x 224
    python benchmarks/bench_index.py --device cuda --precision bf16 --videos 16 --batch-size 64

Prints video-seconds per wall-second of both (file hashing and index writes included; the
pipeline's includes starting its decoding processes, about a second) and the ratio
pipeline / one-at-a-time. Random weights (speed does not depend on them).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_extract import make_videos, probe_duration, random_model  # noqa: E402
from milnce.index import Index, build_index, file_hash  # noqa: E402
from milnce.runoptions import default_workers, resolve_run_options  # noqa: E402
from milnce.windows import DEFAULT_BATCH_CPU, DEFAULT_BATCH_CUDA, WindowSettings  # noqa: E402


def one_at_a_time(model: object, videos: list[Path], directory: Path, settings: dict, batch: int) -> float:
    """The old ``build_index`` loop: hash, ``encode_video_file`` (one decode thread), commit."""
    t0 = time.perf_counter()
    idx = Index.create(directory, model, WindowSettings.for_model(model, **settings))  # type: ignore[arg-type]
    try:
        for p in videos:
            st = os.stat(p)
            h = file_hash(str(p))
            emb = model.encode_video_file(p, batch_size=batch, **settings)  # type: ignore[attr-defined]
            idx.add_video(str(p), emb, size=int(st.st_size), mtime=float(st.st_mtime), content_hash=h)
    finally:
        idx.close()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small videos and windows (a smoke test)")
    ap.add_argument("--videos", type=int, default=None)
    ap.add_argument("--seconds", type=float, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--batch-size", type=int, default=None,
                    help=f"pipeline batch (default: build_index's, {DEFAULT_BATCH_CPU} CPU / {DEFAULT_BATCH_CUDA} CUDA)")
    ap.add_argument("--old-batch-size", type=int, default=4, help="the old path's batch (its default: 4)")
    ap.add_argument("--workers", type=int, default=None, help="decoding processes (default: cores - 1)")
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "milnce-bench-index"))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        count, seconds, (w, h) = args.videos or 6, args.seconds or 8.0, (320, 240)
        settings = {"fps": 10.0, "num_frames": 16, "size": 112, "stride": 8}
    else:
        count, seconds, (w, h) = args.videos or 6, args.seconds or 20.0, (640, 360)
        settings = {"fps": 10.0, "num_frames": 32, "size": 224, "stride": 16}
    work = Path(args.workdir)
    videos = make_videos(work / "videos", count, seconds, w, h)
    total = sum(probe_duration(p) for p in videos)
    model = random_model(args.device, args.precision)
    model.encode_video_file(videos[0], batch_size=args.old_batch_size, end=2.0, **settings)  # warm-up
    workers = default_workers() if args.workers is None else args.workers
    for d in ("old", "new"):
        shutil.rmtree(work / d, ignore_errors=True)
    t_old = one_at_a_time(model, videos, work / "old", settings, args.old_batch_size)
    t0 = time.perf_counter()
    run = resolve_run_options({"batch_size": args.batch_size, "workers": workers}, device=model.device)
    rep = build_index(videos, work / "new", model, progress=False, run=run,
                      window=WindowSettings.for_model(model, **settings))
    t_new = time.perf_counter() - t0
    assert len(rep.added) == count and not rep.failed, rep.summary()
    out = {"videos": count, "video_seconds": total, "settings": settings, "device": args.device,
           "workers": workers, "cores": len(os.sched_getaffinity(0)),
           "batch_size": run.batch_size, "windows": rep.windows_added, "pipeline_windows_per_s": rep.windows_added / t_new,
           "one_at_a_time_vs_per_s": total / t_old, "pipeline_vs_per_s": total / t_new, "ratio": t_old / t_new}
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{count} videos, {total:.1f} video-s, windows {settings}, {out['cores']} cores, {workers} decoding processes")
        print(f"one video at a time (encode_video_file): {out['one_at_a_time_vs_per_s']:8.2f} video-s per wall-s")
        print(f"pipeline (build_index / milnce index):   {out['pipeline_vs_per_s']:8.2f} video-s per wall-s, "
              f"{out['pipeline_windows_per_s']:.2f} windows/s at batch {run.batch_size}")
        print(f"ratio pipeline / one-at-a-time: {out['ratio']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
