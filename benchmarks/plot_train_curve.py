"""Plot loss and held-out R@1 over steps from a run's metrics.jsonl (the README's docs/train_curve.png).

    python benchmarks/plot_train_curve.py RUN docs/train_curve.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> None:
    run, out = Path(sys.argv[1]), Path(sys.argv[2])
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    tr = [r for r in recs if r.get("kind") == "train"]
    ev = [r for r in recs if r.get("kind") == "eval"]
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=90)
    ax.plot([r["step"] for r in tr], [r["loss"] for r in tr], color="tab:blue", lw=1.2, label="MIL-NCE loss (train)")
    ax.set_xlabel("step (16 clips)")
    ax.set_ylabel("loss", color="tab:blue")
    ax2 = ax.twinx()
    ax2.plot([r["step"] for r in ev], [r["R@1"] for r in ev], "o-", color="tab:red", lw=1.2, ms=3,
             label="held-out text→video R@1")
    if ev:
        chance = ev[0]["chance_R@1"]
        ax2.axhline(chance, color="tab:red", ls=":", lw=1, label=f"chance ({chance:.1f}%)")
        ax2.axhline(10 * chance, color="grey", ls="--", lw=1, label="10x chance")
    ax2.set_ylabel("R@1 (%)", color="tab:red")
    ax2.set_ylim(bottom=0)
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=7, loc="center right")
    ax.set_title("S3D from scratch on make-synthetic data, 2-core CPU", fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
