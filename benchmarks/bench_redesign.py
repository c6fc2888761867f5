"""Speed before/after the redesign: extraction, search and inference through the ``src`` of a
base commit and through this tree's, in alternating subprocesses.

    python benchmarks/bench_redesign.py                      # base 0c79a6d, all three sections, 5 rounds
    python benchmarks/bench_redesign.py --what search,inference --rounds 7
    python benchmarks/bench_redesign.py --what extract --workers 2 --num-frames 16 --size 112
    python benchmarks/bench_redesign.py --base-src /tmp/base/src --quick

Each round runs the base and the new tree once each (the order alternating between rounds) on the
same inputs; every subprocess warms up before it times. Sections (``--what``):

- ``extract``: ``run_jobs`` end to end on the same videos, settings and random weights
  (``bench_extract.random_model``'s, seed 0); video-seconds per wall-second.
- ``search``: the same random store (``--windows`` windows of ``--video-windows`` each, seed 0) is
  built once with each tree's own ``Index`` (not timed); each round opens it and times
  ``--queries`` exact ``search_embeddings`` calls (k=10, one query each) and ``--like`` by-example
  ``search_like`` calls; queries per second.
- ``inference``: the fast fp32 path that ``load_model`` gives (``MILNCE(net)``), ``encode_video``
  on a fixed ``--infer-batch`` x 3 x ``--num-frames`` x ``--size`` x ``--size`` batch, ``--reps`` times;
  clips per second.

Prints each round's rates and ratio new / base, and per section the median of the per-round
ratios (1.00 = unchanged; the goal is within 5%). The base ``src`` comes from ``git archive BASE
src`` into a temporary folder unless ``--base-src`` names one.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
NEW_SRC = HERE.parent / "src"

PRELUDE = r"""
import gc, json, sys, time
sys.path.insert(0, sys.argv[1])
import numpy as np
import torch
import milnce
cfg = json.loads(sys.argv[2])
torch.set_num_threads(cfg["threads"])


def random_model():
    from milnce.api import MILNCE
    from milnce.model import S3D

    g = torch.Generator().manual_seed(0)  # bench_extract.random_model's weights (not imported: it puts its src first)
    torch.manual_seed(0)  # the layers set below keep their (seeded) default initialisation
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
    return MILNCE(net.eval())


def emit(rec):
    rec["src"] = milnce.__file__
    print(json.dumps(rec))
"""

EXTRACT = PRELUDE + r"""
from milnce.extract import VideoJob, run_jobs
from milnce.windows import WindowSettings
model = random_model()
s = WindowSettings(fps=cfg["fps"], num_frames=cfg["num_frames"], size=cfg["size"], stride=cfg["stride"])
with torch.inference_mode():  # warm-up: builds the fast path, first allocations
    model.video_net(torch.zeros(cfg["batch"], 3, s.num_frames, s.size, s.size))
gc.collect()  # both trees start the timed part with nothing to collect (as timeit does)
t = time.perf_counter()
res = list(run_jobs(model, [VideoJob(v, key=i) for i, v in enumerate(cfg["videos"])], s,
                    batch_size=cfg["batch"], workers=cfg["workers"], features=True))
wall = time.perf_counter() - t
assert all(r.error is None for r in res), [r.error for r in res]
emit({"wall_s": wall, "check": sum(len(r) for r in res)})
"""

INFERENCE = PRELUDE + r"""
model = random_model()
x = torch.rand(cfg["batch"], 3, cfg["num_frames"], cfg["size"], cfg["size"], generator=torch.Generator().manual_seed(1))
model.encode_video(x, batch_size=cfg["batch"])  # warm-up: builds the fast path, first allocations
gc.collect()  # both trees start the timed part with nothing to collect (as timeit does)
t = time.perf_counter()
for _ in range(cfg["reps"]):
    out = model.encode_video(x, batch_size=cfg["batch"])
wall = time.perf_counter() - t
emit({"wall_s": wall, "check": round(float(out.double().abs().sum()), 2)})
"""

SEARCH = PRELUDE + r"""
import hashlib
from milnce.index import Index


class Emb:
    def __init__(self, emb, hop):
        self.embeddings = emb
        self.starts = np.arange(len(emb)) * hop
        self.ends = self.starts + 1.6
        self.duration = float(self.ends[-1])

    def __len__(self):
        return len(self.embeddings)


def build(d):
    from milnce.windows import WindowSettings

    if hasattr(Index, "create_for"):
        idx = Index.create_for(d, "bench-random", WindowSettings.for_model(None), roots=["/bench"])
    else:  # the base: an index is created for a model (only its weights_id is read here)
        class Model:
            weights_id, info = "bench-random", None
        idx = Index.create(d, Model())
    rng = np.random.default_rng(0)
    per, n = cfg["video_windows"], cfg["windows"]
    try:
        for v0 in range(0, n // per, 100):
            items = []
            for v in range(v0, min(v0 + 100, n // per)):
                emb = rng.standard_normal((per, 512), dtype=np.float32)
                items.append((f"/bench/v{v:06d}.mp4", Emb(emb, 0.8), 1000 + v, 1.0e9 + v, ""))
            idx.add_videos(items)
    finally:
        idx.close()


if cfg["mode"] == "build":
    t = time.perf_counter()
    build(cfg["dir"])
    emit({"wall_s": time.perf_counter() - t, "check": 0})
    sys.exit(0)
idx = Index.open(cfg["dir"])
q = np.random.default_rng(1).standard_normal((cfg["queries"] + 1, 512), dtype=np.float32)
ids = [r.id for r in sorted(idx.videos(), key=lambda r: r.path)]  # the same videos in both stores
idx.search_embeddings(q[-1], k=10, exact=True)  # warm-up: page in the store
idx.search_like(ids[0], 0.0, k=10, exact=True)
gc.collect()  # both trees start the timed part with nothing to collect (as timeit does)
t = time.perf_counter()
got = []
for i in range(cfg["queries"]):
    got.extend((m.path, round(m.score, 3)) for m in idx.search_embeddings(q[i], k=10, exact=True)[0])
for i in range(cfg["like"]):
    got.extend((m.path, round(m.score, 3)) for m in idx.search_like(ids[(i * 7919) % len(ids)], 0.8 * (i % 5), k=10, exact=True))
wall = time.perf_counter() - t
idx.close()
emit({"wall_s": wall, "check": hashlib.sha1(json.dumps(got).encode()).hexdigest()[:12]})
"""


def _base_src(commit: str, given: str | None, tmp: Path) -> str:
    if given:
        return given
    repo = HERE.parent
    archive = subprocess.run(["git", "-C", str(repo), "archive", commit, "src"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive, check=True)
    return str(tmp / "src")


def _run(child: str, src: str, cfg: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = src  # the decoding processes import the same tree
    r = subprocess.run([sys.executable, "-c", child, src, json.dumps(cfg)], capture_output=True,
                       text=True, env=env, timeout=1800)
    if r.returncode:
        raise SystemExit(f"benchmark child failed ({src}):\n{r.stderr[-3000:]}")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["src"].startswith(src), (out["src"], src)  # the chosen tree was the one imported
    return out


def _rounds(name: str, child: str, trees: dict[str, tuple[str, dict]], rounds: int, work: float,
            unit: str, exact_check: bool) -> float:
    """Alternating rounds of one section; ``work`` / wall seconds is the rate. Returns the median ratio."""
    ratios = []
    for i in range(rounds):
        order = ["base", "new"] if i % 2 == 0 else ["new", "base"]
        got = {t: _run(child, trees[t][0], trees[t][1]) for t in order}
        if got["base"]["check"] != got["new"]["check"]:
            msg = f"{name}: base and new give different results ({got['base']['check']} vs {got['new']['check']})"
            if exact_check:
                raise SystemExit(msg)
            print(f"  warning: {msg}")
        rb, rn = work / got["base"]["wall_s"], work / got["new"]["wall_s"]
        ratios.append(rn / rb)
        print(f"  round {i + 1}: base {rb:8.2f}  new {rn:8.2f} {unit}  ratio {rn / rb:.3f}", flush=True)
    med = statistics.median(ratios)
    print(f"{name}: median ratio new / base {med:.3f} (goal: within 0.95 .. 1.05 or faster)", flush=True)
    return med


def _extract(a: argparse.Namespace, base: str, tmp: Path) -> float:
    sys.path.insert(0, str(HERE))
    from bench_extract import make_videos

    vids = make_videos(tmp / "videos", a.videos, a.seconds, 320, 240)
    cfg = {"videos": [str(v) for v in vids], "fps": 10.0, "num_frames": a.num_frames, "size": a.size,
           "stride": max(1, a.num_frames // 2), "batch": a.batch_size, "workers": a.workers, "threads": a.threads}
    print(f"extract: {a.videos} x {a.seconds:g} s 320x240 H.264, {a.num_frames} x {a.size} px, batch {a.batch_size}, "
          f"{a.workers} worker(s), {a.threads} model thread(s)", flush=True)
    return _rounds("extract", EXTRACT, {"base": (base, cfg), "new": (str(NEW_SRC), cfg)}, a.rounds,
                   a.videos * a.seconds, "video-s/s", True)


def _search(a: argparse.Namespace, base: str, tmp: Path) -> float:
    common = {"windows": a.windows, "video_windows": a.video_windows, "queries": a.queries, "like": a.like,
              "threads": a.threads}
    trees = {}
    for name, src in (("base", base), ("new", str(NEW_SRC))):
        cfg = {**common, "dir": str(tmp / f"index-{name}")}
        built = _run(SEARCH, src, {**cfg, "mode": "build"})
        print(f"search: built the {name} store of {a.windows // a.video_windows * a.video_windows} windows "
              f"in {built['wall_s']:.1f} s", flush=True)
        trees[name] = (src, {**cfg, "mode": "time"})
    print(f"search: {a.queries} exact text queries + {a.like} by-example queries per round, k=10, "
          f"{a.threads} thread(s)", flush=True)
    return _rounds("search", SEARCH, trees, a.rounds, a.queries + a.like, "queries/s", False)


def _inference(a: argparse.Namespace, base: str, tmp: Path) -> float:
    cfg = {"batch": a.infer_batch, "num_frames": a.num_frames, "size": a.size, "reps": a.reps, "threads": a.threads}
    print(f"inference: encode_video (fast fp32) on {a.infer_batch} x 3 x {a.num_frames} x {a.size} x {a.size}, "
          f"{a.reps} calls per round, {a.threads} thread(s)", flush=True)
    return _rounds("inference", INFERENCE, {"base": (base, cfg), "new": (str(NEW_SRC), cfg)}, a.rounds,
                   a.reps * a.infer_batch, "clips/s", False)


SECTIONS = {"extract": _extract, "search": _search, "inference": _inference}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--what", default="extract,search,inference", help="sections, comma-separated (default: all)")
    ap.add_argument("--base", default="0c79a6d", help="base commit (default 0c79a6d)")
    ap.add_argument("--base-src", help="a base src folder to use instead of git archive")
    ap.add_argument("--rounds", type=int, help="interleaved rounds (default 5; 2 with --quick)")
    ap.add_argument("--videos", type=int, default=4, help="extract: videos")
    ap.add_argument("--seconds", type=float, default=4.0, help="extract: seconds per video")
    ap.add_argument("--workers", type=int, default=1, help="extract: decoding workers")
    ap.add_argument("--batch-size", type=int, default=8, help="extract: windows per forward pass")
    ap.add_argument("--num-frames", type=int, default=16, help="extract, inference: frames per clip")
    ap.add_argument("--size", type=int, default=112, help="extract, inference: clip side (px)")
    ap.add_argument("--windows", type=int, default=200_000, help="search: windows in the store")
    ap.add_argument("--video-windows", type=int, default=200, help="search: windows per video")
    ap.add_argument("--queries", type=int, default=60, help="search: exact text-embedding queries per round")
    ap.add_argument("--like", type=int, default=20, help="search: by-example queries per round")
    ap.add_argument("--infer-batch", type=int, default=2, help="inference: clips per encode_video call")
    ap.add_argument("--reps", type=int, default=20, help="inference: encode_video calls per round")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the model side")
    ap.add_argument("--quick", action="store_true", help="tiny inputs, 2 rounds unless --rounds (a smoke test)")
    a = ap.parse_args(argv)
    what = [w.strip() for w in a.what.split(",") if w.strip()]
    unknown = [w for w in what if w not in SECTIONS]
    if unknown or not what:
        ap.error(f"--what: choose from {', '.join(SECTIONS)} (got {a.what!r})")
    if a.rounds is not None and a.rounds < 1:
        ap.error("--rounds must be >= 1")
    if a.quick:
        a.rounds, a.videos, a.seconds, a.num_frames, a.size = a.rounds or 2, 2, 2.0, 8, 64
        a.windows, a.video_windows, a.queries, a.like, a.reps = 2000, 50, 3, 2, 1
    a.rounds = 5 if a.rounds is None else a.rounds
    print(f"base {a.base}, {a.rounds} interleaved rounds", flush=True)
    medians = {}
    with tempfile.TemporaryDirectory(prefix="milnce-bench-redesign-") as tmp:
        base = _base_src(a.base, a.base_src, Path(tmp))
        for w in what:
            medians[w] = SECTIONS[w](a, base, Path(tmp))
    print("summary (median new / base): " + ", ".join(f"{k} {v:.3f}" for k, v in medians.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
