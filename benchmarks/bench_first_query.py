"""The server's first query after start-up, with and without the start-up warm-up.

Each run is a fresh child process (one-time costs are per process): it builds the model, opens
the index, creates the app (``milnce.server.create_app(..., warm_up=True/False)``) and times
``GET /api/search`` over HTTP (uvicorn on 127.0.0.1 in a thread, one keep-alive connection):
the first query, then ``--later`` other queries (distinct texts, so the query-embedding cache does not help). Prints, for each
mode, the median over ``--repeat`` runs of the first query's latency, of the later ones, and
the ratio first / later (1.0 = the first query costs no more than any other).

    python benchmarks/bench_first_query.py                  # synthetic index (random model)
    python benchmarks/bench_first_query.py --quick          # 2 runs per mode, 2000 windows
    python benchmarks/bench_first_query.py --index DIR --weights W --vocab V   # a real index
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

QUERIES = ["cut a tomato", "open the door", "man playing guitar", "pour water into a bowl", "add salt",
           "woman is cooking", "car drifting", "waterfall", "red ball moving"]


def synthetic_model():
    import torch

    from bench_web import QUERY_WORDS
    from milnce import MILNCE, S3D

    torch.manual_seed(0)
    return MILNCE(S3D(QUERY_WORDS + [f"word{i}" for i in range(5000)], 512))


def child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    if args.weights:
        from milnce import load_model

        model = load_model(args.weights, args.vocab, download=False, progress=False)
    else:
        model = synthetic_model()
    import http.client
    import threading
    import urllib.parse

    import uvicorn

    from milnce.index import Index
    from milnce.server import create_app, listen

    index = Index.open(args.index, model, readonly=True)
    t1 = time.perf_counter()
    app = create_app(index, model, warm_up=args.warm)
    t2 = time.perf_counter()
    sock = listen("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="error", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    conn = http.client.HTTPConnection("127.0.0.1", sock.getsockname()[1], timeout=60)
    lat = []
    for q in QUERIES[: 1 + args.later]:
        s = time.perf_counter()
        conn.request("GET", "/api/search?" + urllib.parse.urlencode({"q": q, "k": 10}))
        r = conn.getresponse()
        body = r.read()
        lat.append((time.perf_counter() - s) * 1000)
        assert r.status == 200 and json.loads(body)["results"], body[:200]
    conn.close()
    server.should_exit = True
    thread.join(10)
    index.close()
    print(json.dumps({"load_ms": (t1 - t0) * 1000, "app_ms": (t2 - t1) * 1000, "first_ms": lat[0],
                      "later_ms": statistics.median(lat[1:])}))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=5, help="child processes per mode (default 5)")
    ap.add_argument("--later", type=int, default=5, help="queries after the first (default 5, at most 8)")
    ap.add_argument("--windows", type=int, default=20000, help="synthetic index size (default 20000)")
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--quick", action="store_true", help="2 runs per mode over 2000 windows")
    ap.add_argument("--index")
    ap.add_argument("--weights")
    ap.add_argument("--vocab")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--warm", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.later = max(1, min(args.later, len(QUERIES) - 1))
    if args.child:
        child(args)
        return 0
    if args.quick:
        args.repeat, args.windows = 2, 2000
    tmp = None
    if not args.index:
        from bench_web import build_synthetic_index

        tmp = tempfile.mkdtemp(prefix="milnce-bench-first-")
        args.index = build_synthetic_index(os.path.join(tmp, "index"), synthetic_model(), args.windows)
    runs: dict[str, list[dict]] = {"no warm-up": [], "warm-up": []}
    try:
        for _ in range(args.repeat):  # alternate the modes: machine load hits both alike
            for mode in runs:
                cmd = [sys.executable, os.path.abspath(__file__), "--child", "--index", args.index,
                       "--threads", str(args.threads), "--later", str(args.later)]
                cmd += ["--warm"] if mode == "warm-up" else []
                for opt in ("weights", "vocab"):
                    if getattr(args, opt):
                        cmd += [f"--{opt}", getattr(args, opt)]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True)
                runs[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
    finally:
        if tmp:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    print(f"index {args.index if not tmp else f'synthetic, {args.windows} windows'}; {args.repeat} processes per mode, "
          f"medians; torch threads {args.threads}")
    summary = {}
    for mode, rs in runs.items():
        first = statistics.median(r["first_ms"] for r in rs)
        later = statistics.median(r["later_ms"] for r in rs)
        app = statistics.median(r["app_ms"] for r in rs)
        summary[mode] = first / later
        print(f"  {mode:10s}  create_app {app:7.1f} ms   first query {first:7.1f} ms   later {later:6.1f} ms   "
              f"first/later {first / later:5.2f}x")
    print(f"first-query ratio, no warm-up vs warm-up: {summary['no warm-up']:.2f}x vs {summary['warm-up']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
