"""Index and search benchmark (``milnce index`` / ``milnce search``).

1. Indexing throughput: ``build_index`` over generated H.264 videos (320x240, 25 fps, moving
   content), in video-seconds per wall-second (everything: walking, hashing, decoding, the
   model, fsync'ed writes), against the model's own bound: clips/s of ``model.encode_video``
   on ready tensors (same batch size) times the seconds between window starts
   (stride / fps = 1.6 s). Full mode uses the model's windows (32 frames at 10 fps, 224 px,
   stride 16); ``--quick`` uses 16 frames at 112 px, stride 8 and shorter videos (minutes
   instead of tens of minutes on 2 CPU cores). Random weights: same speed as the published ones.
2. Search latency of one query (``Index.search_embeddings``, k=10, merged moments) over
   synthetic stores of 100k and 1M windows (clustered vectors: videos drawn around topic
   centres, windows a random walk around their video): exact (memory-mapped matrix product)
   and ANN (faiss IVF-PQ + exact re-scoring), p50/p95 over single queries, ANN recall@10
   against exact on held-out queries, and the process's resident memory after opening and
   after searching.

    python benchmarks/bench_search.py [--quick] [--sizes 100000 1000000] [--only index search]
                                      [--dir DIR] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch


def rss_mb() -> float:
    """Resident memory of the process, in MB (memory-mapped file pages included)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def anon_mb() -> float:
    """Private (anonymous) resident memory in MB: what the process itself holds, page cache excluded."""
    try:
        with open("/proc/self/smaps_rollup") as f:
            for line in f:
                if line.startswith("Anonymous:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def pct(ts: list[float], p: float) -> float:
    return float(np.percentile(np.asarray(ts) * 1000, p))


# --------------------------------------------------------------------------------------------
# 1. Indexing throughput


def make_video(path: Path, seconds: float, seed: int, w: int = 320, h: int = 240, fps: int = 25) -> None:
    import av

    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps, options={"preset": "veryfast", "crf": "28"})
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for i in range(int(seconds * fps)):
            img = np.roll(base, (i * 2) % w, axis=1)
            y = (i * 3) % (h - 40)
            img[y:y + 40, 100:140] = (i * 5) % 255
            for p in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def random_model():
    from milnce import MILNCE, S3D

    words = ["red", "square", "moving", "video"] + [f"w{i}" for i in range(996)]
    torch.manual_seed(0)
    return MILNCE(S3D(words, 512).eval())


def bench_indexing(args: argparse.Namespace, work: Path) -> dict:
    from milnce.index import build_index
    from milnce.runoptions import resolve_run_options
    from milnce.windows import WindowSettings

    if args.quick:
        fps, T, size, stride, seconds, nvid = 10.0, 16, 112, 8, 20.0, 3
    else:
        fps, T, size, stride, seconds, nvid = 10.0, 32, 224, 16, 48.0, 2
    bs = args.batch_size
    model = random_model()
    print(f"\n[indexing] {'quick' if args.quick else 'full'}: {T} frames at {fps:g} fps, {size} px, stride {stride}, "
          f"batch {bs}; {nvid} videos x {seconds:g} s (320x240 H.264, 25 fps); torch threads {torch.get_num_threads()}",
          flush=True)
    vdir = work / "videos"
    vdir.mkdir()
    for i in range(nvid):
        make_video(vdir / f"v{i}.mp4", seconds, i)
    # The model's bound: clips/s on ready uint8 tensors, same batch size, after warm-up.
    x = torch.randint(0, 255, (bs, 3, T, size, size), dtype=torch.uint8)
    for _ in range(2):
        model.encode_video(x, batch_size=bs)
    reps, t0 = 0, time.perf_counter()
    while reps < 3 or time.perf_counter() - t0 < (5 if args.quick else 20):
        model.encode_video(x, batch_size=bs)
        reps += 1
    clips_s = reps * bs / (time.perf_counter() - t0)
    bound = clips_s * stride / fps  # video-seconds per second if decoding were free
    # Warm the last-batch shapes (oneDNN primitives are built per shape) so the run measures steady state.
    for b in range(1, bs):
        model.encode_video(x[:b], batch_size=bs)
    t0 = time.perf_counter()
    rep = build_index([vdir], work / "ix", model, progress=False,
                      window=WindowSettings.for_model(model, fps=fps, num_frames=T, size=size, stride=stride),
                      run=resolve_run_options({"batch_size": bs}, device=model.device))
    wall = time.perf_counter() - t0
    speed = rep.video_seconds / wall
    out = {"mode": "quick" if args.quick else "full", "fps": fps, "num_frames": T, "size": size, "stride": stride,
           "batch_size": bs, "videos": nvid, "video_seconds": rep.video_seconds, "windows": rep.windows_added,
           "wall_s": wall, "model_clips_per_s": clips_s, "bound_video_s_per_s": bound,
           "index_video_s_per_s": speed, "ratio": speed / bound}
    print(f"  model bound: {clips_s:.2f} clips/s = {bound:.2f} video-s/s")
    print(f"  indexing:    {rep.video_seconds:.1f} video-s ({rep.windows_added} windows) in {wall:.1f} s = "
          f"{speed:.2f} video-s/s -> {speed / bound:.2f} of the bound", flush=True)
    return out


# --------------------------------------------------------------------------------------------
# 2. Search latency


def synthetic_store(directory: Path, n: int, per_video: int = 500, topics: int = 1000, seed: int = 0):
    from milnce.index import Index

    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((topics, 512)).astype(np.float32)
    idx = Index.create(directory, SimpleNamespace(weights_id="synthetic", info=None))
    done, v, t0 = 0, 0, time.perf_counter()
    batch = []
    while done < n:
        m = min(per_video, n - done)
        c = centers[rng.integers(topics)] + 0.6 * rng.standard_normal(512).astype(np.float32)
        walk = np.cumsum(rng.standard_normal((m, 512)).astype(np.float32) * 0.08, axis=0)
        e = (c + walk + 0.3 * rng.standard_normal((m, 512)).astype(np.float32)) * 0.5
        st = np.arange(m) * 1.6
        batch.append((f"/synthetic/video{v:06d}.mp4", SimpleNamespace(embeddings=e, starts=st, ends=st + 3.2,
                                                                       duration=m * 1.6 + 1.6), 1, 1.0, f"h{v}"))
        done, v = done + m, v + 1
        if sum(len(b[1].embeddings) for b in batch) >= 50_000 or done >= n:
            idx.add_videos(batch)
            batch = []
    idx.close()
    qs = (centers[rng.integers(topics, size=400)] + 0.8 * rng.standard_normal((400, 512)).astype(np.float32)) * 0.5
    return qs, time.perf_counter() - t0


def bench_search(args: argparse.Namespace, work: Path) -> list[dict]:
    from milnce.index import Index

    results = []
    for n in args.sizes:
        d = work / f"store{n}"
        print(f"\n[search] {n:,} windows (synthetic, 512-d float32 = {n * 2048 / 1e9:.2f} GB)", flush=True)
        queries, build_s = synthetic_store(d, n)
        print(f"  store written in {build_s:.1f} s", flush=True)
        row = {"windows": n}
        rss0, anon0 = rss_mb(), anon_mb()
        with Index.open(d) as idx:
            row["rss_open_mb"] = rss_mb() - rss0
            nq = args.queries if n < 500_000 else max(20, args.queries // 2)
            for label, mode in (("exact", True), ("scan", "scan")):
                for q in queries[:3]:
                    idx.search_embeddings(q, k=10, exact=mode)  # page the store in
                ts = []
                for q in queries[:nq]:
                    t = time.perf_counter()
                    idx.search_embeddings(q, k=10, exact=mode)
                    ts.append(time.perf_counter() - t)
                row.update({f"{label}_p50_ms": pct(ts, 50), f"{label}_p95_ms": pct(ts, 95),
                            f"rss_after_{label}_mb": rss_mb() - rss0, f"anon_after_{label}_mb": anon_mb() - anon0})
            row["exact_queries"] = nq
            # The cost of moments (k-independent, grown over each candidate video's whole curve)
            # against single windows, in the same process: exact search, k=10 and k=40.
            for kk in (10, 40):
                for label, merge in (("windows", False), ("moments", True)):
                    ts = []
                    for q in queries[:nq]:
                        t = time.perf_counter()
                        idx.search_embeddings(q, k=kk, merge=merge, exact=True)
                        ts.append(time.perf_counter() - t)
                    row[f"{label}_k{kk}_p50_ms"] = pct(ts, 50)
                row[f"moments_over_windows_k{kk}"] = row[f"moments_k{kk}_p50_ms"] / row[f"windows_k{kk}_p50_ms"]
                print(f"  k={kk}: moments p50 {row[f'moments_k{kk}_p50_ms']:.1f} ms vs single windows "
                      f"{row[f'windows_k{kk}_p50_ms']:.1f} ms: ratio {row[f'moments_over_windows_k{kk}']:.2f}", flush=True)
            same = all([(m.video_id, m.start) for m in a] == [(m.video_id, m.start) for m in b] for a, b in zip(
                idx.search_embeddings(queries[:nq], k=10, merge=False, exact=True),
                idx.search_embeddings(queries[:nq], k=10, merge=False, exact="scan")))
            row["screened_equals_scan"] = same
            print(f"  exact (int8 screen + float32 re-score): p50 {row['exact_p50_ms']:.1f} ms, p95 {row['exact_p95_ms']:.1f} ms; "
                  f"same top-10 as the full float32 scan: {same}")
            print(f"  full float32 scan:                      p50 {row['scan_p50_ms']:.1f} ms, p95 {row['scan_p95_ms']:.1f} ms "
                  f"({nq} queries)")
            print(f"  memory: resident +{row['rss_open_mb']:.0f} MB after opening, +{row['rss_after_exact_mb']:.0f} MB after "
                  f"the exact searches, +{row['rss_after_scan_mb']:.0f} MB after the full scans (mapped pages of the "
                  f"{n * 2048 / 2**20:.0f} MB store and {n * 524 / 2**20:.0f} MB codes, shared with the page cache); "
                  f"private memory +{row['anon_after_exact_mb']:.0f} MB / +{row['anon_after_scan_mb']:.0f} MB", flush=True)
        if args.no_ann:
            results.append(row)
            continue
        try:
            import faiss  # noqa: F401
        except ImportError:
            print("  ANN: faiss not installed (pip install faiss-cpu)")
            results.append(row)
            continue
        with Index.open(d, readonly=False) as w:
            t = time.perf_counter()
            info = w.build_ann(queries=queries[200:400])
            row.update(ann_kind=info["kind"], ann_nprobe=info["nprobe"], ann_build_s=time.perf_counter() - t,
                       ann_recall_build=info["recall_at_10"])
        with Index.open(d) as idx:
            idx.ann()
            held = queries[:200]
            exact = [[(m.video_id, m.start) for m in r] for r in idx.search_embeddings(held, k=10, merge=False, exact=True)]
            approx = [[(m.video_id, m.start) for m in r] for r in idx.search_embeddings(held, k=10, merge=False)]
            recall = float(np.mean([len(set(a) & set(e)) / len(e) for a, e in zip(approx, exact)]))
            ts = []
            for q in held:
                t = time.perf_counter()
                idx.search_embeddings(q, k=10)
                ts.append(time.perf_counter() - t)
            row.update(ann_p50_ms=pct(ts, 50), ann_p95_ms=pct(ts, 95), ann_recall_at_10=recall)
        print(f"  ANN {row['ann_kind']} nprobe {row['ann_nprobe']} (built in {row['ann_build_s']:.0f} s): "
              f"p50 {row['ann_p50_ms']:.2f} ms, p95 {row['ann_p95_ms']:.2f} ms; recall@10 vs exact "
              f"{recall:.3f} on 200 held-out queries ({row['ann_recall_build']:.3f} at build)", flush=True)
        results.append(row)
        if not args.keep:
            shutil.rmtree(d, ignore_errors=True)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small windows and videos for the indexing part")
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--only", nargs="+", choices=("index", "search"), default=("index", "search"))
    ap.add_argument("--queries", type=int, default=100, help="timed single queries (half for >= 500k)")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--no-ann", action="store_true")
    ap.add_argument("--dir", help="work folder (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the synthetic stores")
    ap.add_argument("--json", help="write the numbers here")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"numpy {np.__version__}, load average {os.getloadavg()[0]:.1f}")
    work = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="milnce-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    out: dict = {"cpus": os.cpu_count(), "loadavg_start": os.getloadavg()[0]}
    try:
        if "index" in args.only:
            out["indexing"] = bench_indexing(args, work)
        if "search" in args.only:
            out["search"] = bench_search(args, work)
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)
    out["loadavg_end"] = os.getloadavg()[0]
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    print(f"\nload average at the end: {out['loadavg_end']:.1f}")


if __name__ == "__main__":
    sys.exit(main())
