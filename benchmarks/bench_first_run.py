"""The first run that works anywhere: `milnce demo` twice in a fresh $MILNCE_HOME, network blocked.

    python benchmarks/bench_first_run.py                 # the real fallback recipe (budget: 300 s, then 30 s)
    python benchmarks/bench_first_run.py --recipe '{"videos": 8, "val_videos": 4, "steps": 2}'   # smoke test

Every download is refused: ``http_proxy``/``https_proxy`` point at a 127.0.0.1 port that is bound
but not listening, and ``MILNCE_MIRRORS`` is unset, so the published weights cannot be had and
the demo trains the fallback model (``milnce.train.fallback``), indexes the generated held-out
videos and answers its queries; the second run finds the model in the cache. Each run is a
fresh subprocess (``python -m milnce demo --quiet``, the sources next to this script). Prints
both wall times, the CPU seconds they used, their ratios to the budgets, the fallback model's
held-out retrieval (R@5 must be >= 50 %) and the load average (the machine may be shared).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUDGET_FIRST, BUDGET_SECOND = 300.0, 30.0


def _cpu_children() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_demo(env: dict[str, str]) -> tuple[float, float, str]:
    cpu0, t0 = _cpu_children(), time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "milnce", "demo", "--quiet"], env=env, capture_output=True,
                          text=True)
    wall, cpu = time.monotonic() - t0, _cpu_children() - cpu0
    if proc.returncode != 0:
        sys.exit(f"milnce demo failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return wall, cpu, proc.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", help="JSON overrides of the fallback recipe ($MILNCE_FALLBACK_RECIPE)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary MILNCE_HOME")
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="milnce-first-run-"))
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))  # bound, never listening: every connection is refused at once
    proxy = f"http://127.0.0.1:{blocker.getsockname()[1]}"
    env = {k: v for k, v in os.environ.items() if k not in ("MILNCE_MIRRORS", "MILNCE_WEIGHTS", "MILNCE_VOCAB",
                                                           "no_proxy", "NO_PROXY")}
    env.update({"MILNCE_HOME": str(home), "http_proxy": proxy, "https_proxy": proxy, "HTTP_PROXY": proxy,
                "HTTPS_PROXY": proxy, "PYTHONPATH": str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")})
    env.pop("MILNCE_FALLBACK_RECIPE", None)
    if args.recipe:
        env["MILNCE_FALLBACK_RECIPE"] = args.recipe
    try:
        first, cpu1, out1 = run_demo(env)
        second, cpu2, out2 = run_demo(env)
        done = next((home / "fallback").glob("synthetic-*/fallback.json"))
        info = json.loads(done.read_text())
    finally:
        blocker.close()
        if not args.keep:
            shutil.rmtree(home, ignore_errors=True)
    held = info.get("held_out", {})
    print(out2.strip().splitlines()[0])
    print(f"recipe: {json.dumps(info['recipe'])}")
    print(f"fallback model: built in {info['seconds']:.1f} s; held-out R@1 {held.get('R@1', float('nan')):.1f}% "
          f"R@5 {held.get('R@5', float('nan')):.1f}% R@10 {held.get('R@10', float('nan')):.1f}% "
          f"over {held.get('n', 0):.0f} captions (R@5 needed: >= 50%)")
    right = sum(line.count("(right:") for line in out2.splitlines())
    print(f"demo queries: {right} of 3 best matches right")
    print(next((line for line in out2.splitlines() if line.startswith("All ")), "(no held-out summary)"))
    print(f"first run:  {first:7.1f} s wall, {cpu1:7.1f} s CPU   budget {BUDGET_FIRST:.0f} s: "
          f"{first / BUDGET_FIRST:.2f} of it")
    print(f"second run: {second:7.1f} s wall, {cpu2:7.1f} s CPU   budget {BUDGET_SECOND:.0f} s: "
          f"{second / BUDGET_SECOND:.2f} of it")
    load = os.getloadavg()
    print(f"{os.cpu_count()} CPUs, load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} (a shared machine "
          "stretches wall times; CPU seconds do not depend on it)")


if __name__ == "__main__":
    main()
