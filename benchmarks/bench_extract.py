"""Feature extraction throughput: ``run_jobs`` (what ``milnce extract`` runs) against its bound
and against the research recipe, same process, same videos, same windows.

    python benchmarks/bench_extract.py                 # 4 x 20 s 720p H.264, 32 x 224 x 224, batch 8
    python benchmarks/bench_extract.py --quick         # 2 x 4 s 320x240, 16 x 112 x 112 (smoke test)
    python benchmarks/bench_extract.py --device cuda --precision bf16 --batch-size 64 --videos 16
    python benchmarks/bench_extract.py --recipe videoclip   # a feature recipe's windows (ffmpeg-exact, 1-s chunks)

Prints video-seconds per wall-second of

* ``bound``: the model alone on pre-decoded windows (uint8 in memory, same batches);
* ``decode``: the pipeline's decoding alone (same workers, a model that does nothing);
* ``extract``: ``run_jobs`` end to end (worker processes decode, the model runs on batches);
* ``recipe``: the research recipe: one ``ffmpeg`` subprocess per clip (``-ss``, ``fps``/``crop``/
  ``scale`` filters, raw RGB over a pipe; PyAV reopening the file per clip without ffmpeg), the
  model on one clip at a time;

and the ratios extract / bound (target >= 0.9 where the model is the bottleneck, e.g. a CPU),
extract / min(bound, decode) and extract / recipe. Random weights (speed does not depend on them).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from milnce.api import MILNCE  # noqa: E402
from milnce.extract import VideoJob, run_jobs  # noqa: E402
from milnce.model import S3D  # noqa: E402
from milnce.windows import WindowSettings  # noqa: E402


def random_model(device: str = "cpu", precision: str = "fp32", fast: bool = True, seed: int = 0) -> MILNCE:
    """The model with random weights and non-trivial batch-norm statistics."""
    g = torch.Generator().manual_seed(seed)
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
    return MILNCE(net.to(device).eval(), fast=fast, precision=precision)  # type: ignore[arg-type]


class NullModel:
    """Stands in for the model to time decoding alone through the same pipeline."""

    weights_id, precision = "null", "fp32"

    def __init__(self) -> None:
        self.device = torch.device("meta")  # the batch's float conversion costs nothing

    def video_net(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"video_embedding": torch.zeros(x.shape[0], 512), "mixed_5c": torch.zeros(x.shape[0], 1024)}


def make_videos(workdir: Path, count: int, seconds: float, width: int, height: int, rate: int = 25,
                jobs: int = 1) -> list[Path]:
    """``count`` H.264 test videos (ffmpeg's testsrc2 when ffmpeg exists, else PyAV-drawn),
    ``jobs`` of them made at a time."""
    workdir.mkdir(parents=True, exist_ok=True)
    out = [workdir / f"v{i}_{width}x{height}_{seconds:g}s.mp4" for i in range(count)]
    todo = [(p, i, seconds, width, height, rate) for i, p in enumerate(out) if not (p.exists() and p.stat().st_size > 0)]
    if jobs > 1 and len(todo) > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(min(jobs, len(todo))) as pool:
            list(pool.map(_make_video, *zip(*todo)))
    else:
        for t in todo:
            _make_video(*t)
    return out


def _make_video(p: Path, i: int, seconds: float, width: int, height: int, rate: int) -> None:
    tmp = p.with_suffix(".part.mp4")
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg:
        subprocess.run([ffmpeg, "-v", "error", "-y", "-f", "lavfi", "-i",
                        f"testsrc2=size={width}x{height}:rate={rate},hue=h={37 * i}", "-t", f"{seconds:g}",
                        "-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-pix_fmt", "yuv420p", str(tmp)],
                       check=True)
    else:
        import av

        with av.open(str(tmp), "w") as c:
            s = c.add_stream("libx264", rate=rate, options={"preset": "veryfast", "crf": "23"})
            s.width, s.height, s.pix_fmt = width, height, "yuv420p"
            yy, xx = np.mgrid[0:height, 0:width]
            planes = [(xx % 256).astype(np.uint8), (yy % 256).astype(np.uint8), ((xx + yy) % 256).astype(np.uint8)]
            img = np.empty((height, width, 3), np.uint8)
            for f in range(int(seconds * rate)):
                for ch, (plane, shift) in enumerate(zip(planes, (4 * f + 31 * i, 2 * f, f))):
                    np.add(plane, np.uint8(shift % 256), out=img[:, :, ch])  # wraps around like % 256
                for pkt in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    c.mux(pkt)
            for pkt in s.encode():
                c.mux(pkt)
    os.replace(tmp, p)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_bound(model: Any, videos: list[Path], s: WindowSettings, batch: int) -> tuple[float, float, int]:
    """The model alone on the pipeline's own windows, pre-decoded: (video seconds, model seconds, windows)."""
    from milnce.video import read_clips

    clips, dur = [], 0.0
    for v in videos:
        if s.decoder == "ffmpeg":  # a recipe: its ffmpeg-exact chunks
            from milnce.video.ffmpeg_exact import ffmpeg_chunks

            clips += [torch.from_numpy(c.frames).permute(3, 0, 1, 2) for c in ffmpeg_chunks(str(v), s.fps, s.size,
                                                                                              s.num_frames)]
        else:
            reader = read_clips(v, s.fps, s.num_frames, s.size, s.stride, crop=s.crop)
            clips += [c.frames for c in reader]
        dur += probe_duration(v)
    x = torch.stack(clips)
    device = model.device
    with torch.inference_mode():
        warm = x[:batch].to(device).float().div_(255)
        model.video_net(warm)
        _sync(device)
        t = time.perf_counter()
        for i in range(0, len(x), batch):
            chunk = x[i:i + batch]
            if device.type == "cuda" and len(chunk) < batch:  # the pipeline keeps one shape too
                chunk = torch.cat([chunk, x[: batch - len(chunk)]])
            out = model.video_net(chunk.to(device, non_blocking=True).float().div_(255))
            out["video_embedding"].float().cpu()
        _sync(device)
    return dur, time.perf_counter() - t, len(x)


def probe_duration(path: Path) -> float:
    import av

    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return float(s.duration * s.time_base) if s.duration else float(c.duration or 0) / 1e6


def bench_pipeline(model: Any, videos: list[Path], s: WindowSettings, batch: int, workers: int,
                   **kw: Any) -> tuple[float, float, int, dict]:
    stats: dict[str, float] = {}
    t = time.perf_counter()
    res = list(run_jobs(model, [VideoJob(str(v)) for v in videos], s, batch_size=batch, workers=workers, stats=stats,
                        **kw))
    wall = time.perf_counter() - t
    bad = [r.error for r in res if r.error]
    if bad:
        raise SystemExit(f"extraction failed: {bad[0]}")
    return sum(r.duration for r in res), wall, sum(len(r) for r in res), stats


def recipe_clip(ffmpeg: str | None, path: Path, start: float, s: WindowSettings) -> np.ndarray:
    """One clip the research way: a fresh decoder per clip (uint8 T x S x S x 3)."""
    T, S = s.num_frames, s.size
    if ffmpeg:
        vf = (f"fps={s.fps:g},crop=w=min(iw\\,ih):h=min(iw\\,ih):x=(iw-min(iw\\,ih))*0.5:y=(ih-min(iw\\,ih))*0.5,"
              f"scale={S}:{S}")
        cmd = [ffmpeg, "-v", "error", "-threads", "1", "-ss", f"{start:.6f}", "-i", str(path),
               "-t", f"{T / s.fps + 0.1:.3f}", "-vf", vf, "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:"]
        raw = subprocess.run(cmd, capture_output=True, check=True).stdout
        frames = np.frombuffer(raw, np.uint8).reshape(-1, S, S, 3)[:T]
        if len(frames) < T:
            frames = np.concatenate([frames, np.repeat(frames[-1:], T - len(frames), 0)])
        return frames
    from milnce.video import read_clip

    clip = read_clip(path, start, start + T / s.fps, num_windows=1, fps=s.fps, num_frames=T, size=S, crop="square")
    return clip.frames[0].permute(1, 2, 3, 0).numpy()


def bench_recipe(model: Any, videos: list[Path], s: WindowSettings, max_clips: int | None) -> tuple[float, float, int]:
    """(video seconds covered, wall seconds, clips) for the recipe over the same windows."""
    ffmpeg = shutil.which("ffmpeg")
    device = model.device
    todo = []
    for v in videos:
        d = probe_duration(v)
        n = max(1, int(np.ceil((d * s.fps - s.num_frames) / s.stride)) + 1)
        todo += [(v, k * s.hop, d / n) for k in range(n)]
    if max_clips is not None and len(todo) > max_clips:  # a sample of the windows, scaled up
        step = len(todo) / max_clips
        todo = [todo[int(i * step)] for i in range(max_clips)]
    t = time.perf_counter()
    covered = 0.0
    with torch.inference_mode():
        for v, st, share in todo:
            frames = recipe_clip(ffmpeg, v, st, s)
            x = torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2)[None].float().div_(255)
            out = model.video_net(x.to(device))
            out["video_embedding"].float().cpu()
            covered += share
    return covered, time.perf_counter() - t, len(todo)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=int, default=4)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--num-frames", type=int, default=32)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--stride", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=None, help="default: 64 on CUDA, 8 on the CPU")
    p.add_argument("--workers", type=int, default=None, help="decoding processes (default: cores - 1)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--recipe-clips", type=int, default=None, help="time the recipe on at most this many clips")
    p.add_argument("--skip-recipe", action="store_true")
    p.add_argument("--rounds", type=int, default=1, help="alternate bound and extract this many times")
    p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "milnce-bench-extract"))
    p.add_argument("--json", help="write the results here")
    p.add_argument("--quick", action="store_true", help="2 x 4 s 320x240 videos, 16 x 112 x 112 windows")
    p.add_argument("--recipe", choices=("videoclip", "univl"),
                   help="time a feature recipe's windows (milnce extract --recipe) instead of --num-frames/--size/--stride")
    args = p.parse_args(argv)
    if args.quick:
        args.videos, args.seconds, args.width, args.height = 2, 4.0, 320, 240
        args.num_frames, args.size, args.stride = 16, 112, 8
    device = torch.device(args.device)
    batch = args.batch_size or (64 if device.type == "cuda" else 8)
    from milnce.extract import default_workers

    workers = default_workers() if args.workers is None else args.workers
    s = WindowSettings(fps=10.0, num_frames=args.num_frames, size=args.size, stride=args.stride, crop="square")
    pad = "repeat"
    if args.recipe:
        from milnce.recipes import get_recipe

        s, pad, args.skip_recipe = get_recipe(args.recipe).window, "zeros", True
    videos = make_videos(Path(args.workdir), args.videos, args.seconds, args.width, args.height)
    model = random_model(args.device, args.precision)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    print(f"device {device}, {args.precision}, torch threads {torch.get_num_threads()}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, cores {len(os.sched_getaffinity(0))}, "
          f"workers {workers}, batch {batch}; {len(videos)} x {args.seconds:g} s {args.width}x{args.height} H.264; "
          f"windows {s.num_frames} x {s.size} px every {s.stride} frames at {s.fps:g} fps"
          + (f" (recipe {args.recipe}: {s.num_frames * s.fps / s.stride:g} "
             f"frames per video-second; the default 20)" if args.recipe else ""), flush=True)
    # warm-up: starts the decoding-process server once (as a long extraction pays it once)
    bench_pipeline(model, videos[:1], s, batch, workers, pad=pad)
    res: dict[str, Any] = {}
    dur, t, n, _ = bench_pipeline(NullModel(), videos, s, batch, workers, pad=pad)
    res["decode"] = {"video_s": dur, "wall_s": t, "windows": n, "rate": dur / t}
    print(f"  decode  ({workers} workers, no model)       {dur / t:8.2f} video-s/s  ({n / t:.2f} windows/s)", flush=True)
    per_round = []
    for _ in range(args.rounds):  # bound and extract alternate, so load drift hits both alike
        dur, t, n = bench_bound(model, videos, s, batch)
        res["bound"] = {"video_s": dur, "wall_s": t, "windows": n, "rate": dur / t}
        print(f"  bound   (model alone, pre-decoded) {dur / t:8.2f} video-s/s  ({n / t:.2f} windows/s)", flush=True)
        dur, t, n, st = bench_pipeline(model, videos, s, batch, workers, pad=pad)
        res["extract"] = {"video_s": dur, "wall_s": t, "windows": n, "rate": dur / t, "stats": st}
        print(f"  extract (run_jobs end to end)     {dur / t:8.2f} video-s/s  ({n / t:.2f} windows/s; model waited "
              f"{st['wait_s']:.1f} s of {st['wall_s']:.1f} s)", flush=True)
        per_round.append(res["extract"]["rate"] / res["bound"]["rate"])
    res["extract_over_bound_rounds"] = per_round
    if not args.skip_recipe:
        dur, t, n = bench_recipe(model, videos, s, args.recipe_clips)
        res["recipe"] = {"video_s": dur, "wall_s": t, "clips": n, "rate": dur / t,
                         "decoder": "ffmpeg subprocess" if shutil.which("ffmpeg") else "PyAV reopen"}
        print(f"  recipe  ({res['recipe']['decoder']} per clip) {dur / t:8.2f} video-s/s", flush=True)
    e = res["extract"]["rate"]
    import statistics

    print(f"\nextract / bound                 = {statistics.median(per_round):.3f} (median of {len(per_round)} "
          f"rounds: {', '.join(f'{x:.3f}' for x in per_round)})")
    print(f"extract / min(bound, decode)    = {e / min(res['bound']['rate'], res['decode']['rate']):.3f}")
    if "recipe" in res:
        print(f"extract / recipe                = {e / res['recipe']['rate']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
