"""Latency of ``GET /api/search`` under concurrent clients, on loopback only.

Starts the server (``milnce.server.create_app`` under uvicorn) in a child process on
127.0.0.1 and a free port, then runs ``--clients`` threads (default 20), each with its own
keep-alive connection, sending searches back to back for ``--seconds`` (default 30). Prints
p50/p95/p99 latency, throughput and errors, and stops the server. Exit status 1 on any error.

    python benchmarks/bench_web.py                     # synthetic index (random model), 30 s
    python benchmarks/bench_web.py --seconds 5         # quick run
    python benchmarks/bench_web.py --index DIR --weights W --vocab V   # a real index

The synthetic index is a real ``milnce.index`` folder (in a temporary folder, removed at the
end) with ``--windows`` random 512-d window embeddings over videos of 100 windows, searched
with a randomly initialised model: it measures the server (text encoding, exact search and
merging, JSON, HTTP), not the model's quality.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse

QUERIES = [
    "cut a tomato", "open the door", "man playing guitar", "pour water into a bowl", "add salt",
    "woman is cooking", "car drifting", "waterfall", "red ball moving", "the man is cutting the green tomato",
]


# ----- the server side (child process) ------------------------------------------------------


def build_synthetic_index(directory: str, model, num_windows: int, per_video: int = 100, seed: int = 0):
    """A real ``milnce.index`` folder holding random unit embeddings: ``per_video`` windows of
    3.2 s every 1.6 s per (nonexistent) video. Returns the folder."""
    import types

    import numpy as np

    from milnce.index import Index

    rng = np.random.default_rng(seed)
    idx = Index.create(directory, model)
    try:
        for v in range((num_windows + per_video - 1) // per_video):
            n = min(per_video, num_windows - v * per_video)
            emb = rng.standard_normal((n, 512), dtype=np.float32)
            emb /= np.linalg.norm(emb, axis=1, keepdims=True)
            starts = np.arange(n) * 1.6
            windows = types.SimpleNamespace(embeddings=emb, starts=starts, ends=starts + 3.2, duration=float(starts[-1] + 3.2))
            idx.add_video(os.path.join(directory, "videos", f"video{v:05d}.mp4"), windows, size=1000 + v,
                          mtime=0.0, content_hash=f"synthetic{v}")
    finally:
        idx.close()
    return directory


def run_server(args: argparse.Namespace) -> None:
    """Child process: load the model and index once, print READY <port>, serve until killed."""
    import torch
    import uvicorn

    from milnce.server import LOOPBACK_HOSTS, create_app, listen

    torch.set_num_threads(args.threads)
    if args.index:
        from milnce import load_model
        from milnce.index import Index

        model = load_model(args.weights, args.vocab, download=False, progress=False)
        index = Index.open(args.index, model, readonly=True)
    else:
        import tempfile

        from milnce import MILNCE, S3D
        from milnce.index import Index

        words = QUERY_WORDS + [f"word{i}" for i in range(5000)]
        torch.manual_seed(0)
        model = MILNCE(S3D(words, 512), fast=False)
        tmp = tempfile.mkdtemp(prefix="milnce-bench-web-")
        build_synthetic_index(os.path.join(tmp, "index"), model, args.windows)
        index = Index.open(os.path.join(tmp, "index"), model, readonly=True)
    app = create_app(index, model, allowed_hosts=LOOPBACK_HOSTS)  # as `milnce serve` on localhost
    sock = listen("127.0.0.1", 0)
    print(f"READY {sock.getsockname()[1]} {len(index)}", flush=True)
    try:
        uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False)).run(sockets=[sock])
    finally:
        index.close()
        if not args.index:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)


QUERY_WORDS = sorted({w for q in QUERIES for w in q.split()})


# ----- the client side ----------------------------------------------------------------------


def client(port: int, deadline: float, k: int, seed: int, latencies: list[float], errors: list[str]) -> None:
    rnd = random.Random(seed)
    conn = None
    while time.perf_counter() < deadline:
        q = rnd.choice(QUERIES)
        path = "/api/search?" + urllib.parse.urlencode({"q": q, "k": k})
        t0 = time.perf_counter()
        try:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("GET", path)
            r = conn.getresponse()
            body = r.read()
            dt = time.perf_counter() - t0
            if r.status != 200:
                errors.append(f"HTTP {r.status}: {body[:120]!r}")
                continue
            data = json.loads(body)
            if not data["results"] or len(data["results"]) > k:
                errors.append(f"bad result count {len(data['results'])} for {q!r}")
                continue
            latencies.append(dt)
        except (OSError, http.client.HTTPException, ValueError, KeyError) as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
            if conn is not None:
                conn.close()
            conn = None
    if conn is not None:
        conn.close()


def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    i = min(len(sorted_values) - 1, max(0, round(p / 100 * (len(sorted_values) - 1))))
    return sorted_values[i]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=30.0, help="measured duration (default 30)")
    ap.add_argument("--clients", type=int, default=20, help="concurrent clients (default 20)")
    ap.add_argument("--k", type=int, default=10, help="results per search (default 10)")
    ap.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first (default 2)")
    ap.add_argument("--windows", type=int, default=20000, help="synthetic index size (default 20000)")
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="torch threads in the server")
    ap.add_argument("--index", help="a real index folder (with --weights/--vocab) instead of the synthetic one")
    ap.add_argument("--weights")
    ap.add_argument("--vocab")
    ap.add_argument("--json", action="store_true", help="print the numbers as JSON too")
    ap.add_argument("--server", action="store_true", help=argparse.SUPPRESS)  # child-process mode
    args = ap.parse_args(argv)
    if args.server:
        run_server(args)
        return 0
    if not (0 < args.seconds <= 600 and 1 <= args.clients <= 200):
        ap.error("--seconds must be in (0, 600] and --clients in 1..200")

    cmd = [sys.executable, os.path.abspath(__file__), "--server", "--windows", str(args.windows),
           "--threads", str(args.threads)]
    for opt in ("index", "weights", "vocab"):
        if getattr(args, opt):
            cmd += [f"--{opt}", getattr(args, opt)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        if not line.startswith("READY"):
            print(f"bench_web: the server did not start (exit {proc.wait(30)})", file=sys.stderr)
            return 1
        _, port_s, windows = line.split()
        port = int(port_s)
        print(f"server pid {proc.pid} on 127.0.0.1:{port}, {int(windows):,} windows; "
              f"{args.clients} clients, k={args.k}, {args.warmup:g} s warm-up + {args.seconds:g} s")

        def run_phase(seconds: float) -> tuple[list[float], list[str], float]:
            lat: list[float] = []
            err: list[str] = []
            t0 = time.perf_counter()
            deadline = t0 + seconds
            threads = [threading.Thread(target=client, args=(port, deadline, args.k, i, lat, err), daemon=True)
                       for i in range(args.clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(seconds + 60)
            return lat, err, time.perf_counter() - t0

        if args.warmup > 0:
            run_phase(args.warmup)
        lat, err, wall = run_phase(args.seconds)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    lat.sort()
    ms = [x * 1000 for x in lat]
    result = {
        "requests": len(lat), "errors": len(err), "seconds": round(wall, 2), "clients": args.clients,
        "throughput_rps": round(len(lat) / wall, 1),
        "p50_ms": round(percentile(ms, 50), 1), "p95_ms": round(percentile(ms, 95), 1),
        "p99_ms": round(percentile(ms, 99), 1), "max_ms": round(ms[-1], 1) if ms else None,
        "mean_ms": round(statistics.fmean(ms), 1) if ms else None,
    }
    print(f"requests {result['requests']}  errors {result['errors']}  throughput {result['throughput_rps']} req/s")
    print(f"latency ms: p50 {result['p50_ms']}  p95 {result['p95_ms']}  p99 {result['p99_ms']}  "
          f"max {result['max_ms']}  mean {result['mean_ms']}")
    if err:
        for e in sorted(set(err))[:5]:
            print(f"  error: {e}")
    if args.json:
        print(json.dumps(result))
    return 1 if err or not lat else 0


if __name__ == "__main__":
    sys.exit(main())
