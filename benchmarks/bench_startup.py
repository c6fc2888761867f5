"""Start-up time of milnce commands against ``python -c "import torch"``, in one run.

    python benchmarks/bench_startup.py                         # full-size random checkpoint, 5 rounds
    python benchmarks/bench_startup.py --quick                 # small vocabulary, 3 rounds (smoke test)
    python benchmarks/bench_startup.py --index IDX             # also `milnce search --index IDX q`
    python benchmarks/bench_startup.py --synthetic-index 20000 # ... on a synthetic index of that many windows
    python benchmarks/bench_startup.py --weights W.pth --vocab V.npy   # real files instead

Each case runs as a fresh subprocess (the Python of this script, the ``milnce`` sources next to
it); rounds are interleaved so machine noise hits every case alike, the first round only warms
the file cache (and milnce's verification cache) and is not counted. Prints the median wall
time of each case and its ratio to the ``import torch`` baseline measured in the same run.

The default checkpoint has the published shapes (66,249 words + padding, space-to-depth video
tower, about 125 MB) with random weights; it is written once into ``--workdir``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
FULL_VOCAB = 66249


def write_random_checkpoint(folder: Path, words: int) -> tuple[Path, Path]:
    """A checkpoint of the published layout with random weights and a ``words``-word vocabulary."""
    wpath, vpath = folder / f"random_{words}.pth", folder / f"random_{words}_words.npy"
    if wpath.exists() and vpath.exists():
        return wpath, vpath
    code = (
        "import sys, numpy as np, torch\n"
        "from milnce.model import S3D\n"
        "words = int(sys.argv[1])\n"
        "torch.manual_seed(0)\n"
        "net = S3D(None, 512, num_embeddings=words + 1)\n"
        "torch.save(net.state_dict(), sys.argv[2] + '.tmp')\n"
        "known = ['cut', 'tomato', 'open', 'the', 'door', 'pour', 'water']\n"
        "vocab = known + [f'w{i}' for i in range(words - len(known))]\n"
        "np.save(sys.argv[3] + '.tmp.npy', np.asarray(vocab, dtype=str), allow_pickle=False)\n"
    )
    subprocess.run([sys.executable, "-c", code, str(words), str(wpath), str(vpath)], check=True, env=_env({}))
    os.replace(str(wpath) + ".tmp", wpath)
    os.replace(str(vpath) + ".tmp.npy", vpath)
    return wpath, vpath


def write_synthetic_index(folder: Path, wpath: Path, vpath: Path, windows: int, env: dict[str, str]) -> Path:
    """An index of ``windows`` random 512-d windows tagged with the checkpoint's weights id, so that
    ``milnce search`` accepts it with these weights (uses ``milnce.index.Index``)."""
    code = (
        "import sys, numpy as np\n"
        "from types import SimpleNamespace\n"
        "from milnce.index import Index\n"
        "from milnce.weights import load_verified\n"
        "wid = load_verified(sys.argv[1]).fingerprint\n"
        "n, per = int(sys.argv[3]), 500\n"
        "rng = np.random.default_rng(0)\n"
        "idx = Index.create(sys.argv[2], SimpleNamespace(weights_id=wid, info=None))\n"
        "batch, v = [], 0\n"
        "while v * per < n:\n"
        "    m = min(per, n - v * per)\n"
        "    e = rng.standard_normal((m, 512)).astype(np.float32)\n"
        "    st = np.arange(m) * 1.6\n"
        "    batch.append((f'/synthetic/video{v:05d}.mp4', SimpleNamespace(embeddings=e, starts=st, ends=st + 3.2, "
        "duration=m * 1.6 + 1.6), 1, 1.0, f'h{v}'))\n"
        "    v += 1\n"
        "idx.add_videos(batch)\n"
        "idx.close()\n"
    )
    target = folder / f"index_{windows}"
    if not target.exists():
        subprocess.run([sys.executable, "-c", code, str(wpath), str(target), str(windows)], check=True, env=env)
    return target


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(extra)
    return env


def _milnce_cmd() -> list[str]:
    """How a user starts the CLI: the console script next to this Python, else ``-m milnce.cli``."""
    script = Path(sys.executable).parent / "milnce"
    return [str(script)] if script.exists() else [sys.executable, "-m", "milnce.cli"]


def run_once(cmd: list[str], env: dict[str, str]) -> float:
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (rc {proc.returncode}): {proc.stderr.strip()[-500:]}")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=None, help="counted rounds (default 5, --quick 3)")
    p.add_argument("--quick", action="store_true", help="small vocabulary (300 words), fewer rounds")
    p.add_argument("--weights", help="use this weights file instead of a random checkpoint")
    p.add_argument("--vocab", help="vocabulary .npy for --weights")
    p.add_argument("--index", help="an index folder: also time `milnce search --index INDEX q` (with --weights/--vocab "
                   "if given, else the default weights)")
    p.add_argument("--synthetic-index", type=int, metavar="N", help="write a synthetic index of N windows for "
                   "these weights and time `milnce search` on it")
    p.add_argument("--query", default="cut tomato", help="query for the text and search cases")
    p.add_argument("--workdir", help="where the random checkpoint is written and kept (default: a temp folder)")
    args = p.parse_args(argv)
    rounds = args.rounds or (3 if args.quick else 5)

    tmp = Path(tempfile.mkdtemp(prefix="bench_startup_"))
    try:
        if args.weights:
            if not args.vocab:
                p.error("--weights needs --vocab")
            wpath, vpath = Path(args.weights), Path(args.vocab)
        else:
            work = Path(args.workdir) if args.workdir else tmp
            work.mkdir(parents=True, exist_ok=True)
            wpath, vpath = write_random_checkpoint(work, 300 if args.quick else FULL_VOCAB)
        env = _env({"MILNCE_HOME": str(tmp / "home"), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
        q = repr(args.query)
        cli = _milnce_cmd()
        cases: dict[str, tuple[list[str], dict[str, str]]] = {
            "import torch": ([sys.executable, "-c", "import torch"], env),
            "import milnce": ([sys.executable, "-c", "import milnce"], env),
            "milnce --help": (cli + ["--help"], env),
            "load_model + encode_text": (
                [sys.executable, "-c",
                 f"import milnce; m = milnce.load_model({str(wpath)!r}, {str(vpath)!r}, download=False); "
                 f"m.encode_text([{q}])"], env),
        }
        if args.synthetic_index:
            index = str(write_synthetic_index(Path(args.workdir) if args.workdir else tmp, wpath, vpath,
                                              args.synthetic_index, env))
            search_env = dict(env, MILNCE_WEIGHTS=str(wpath), MILNCE_VOCAB=str(vpath))
            cases["milnce search"] = (cli + ["search", "--index", index, args.query], search_env)
        elif args.index:
            search_env = dict(env)
            if not args.weights:
                search_env.pop("MILNCE_HOME")  # the user's cache holds the weights the index was built with
            else:
                search_env.update(MILNCE_WEIGHTS=str(wpath), MILNCE_VOCAB=str(vpath))
            cases["milnce search"] = (cli + ["search", "--index", args.index, args.query], search_env)

        times: dict[str, list[float]] = {name: [] for name in cases}
        print(f"weights {wpath} ({wpath.stat().st_size:,} bytes), {rounds} rounds + 1 warm-up, "
              f"python {sys.executable}", flush=True)
        for r in range(rounds + 1):
            for name, (cmd, cenv) in cases.items():
                t = run_once(cmd, cenv)
                if r:
                    times[name].append(t)
        base = statistics.median(times["import torch"])
        print(f"\n{'case':28s} {'median s':>9s} {'min s':>7s} {'x import torch':>15s}")
        for name, ts in times.items():
            med = statistics.median(ts)
            print(f"{name:28s} {med:9.3f} {min(ts):7.3f} {med / base:14.2f}x")
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
