"""Recall of visual, speech and hybrid search on a generated collection where narration and
pixels disagree (issue 28, item 5).

Collection: the fallback recipe's 24 held-out synthetic videos (``milnce.train.fallback``: two
4-second scenes each, a coloured shape moving; 48 distinct scenes) searched with the fallback model
trained on the synthetic set (``--model fallback``, built into the cache on first use: minutes on
2 cores) or the random-weight test model (``--model random``). Each video gets a subtitle file:

- over scene 1, a cooking instruction unique to the video ("now add two teaspoons of baking
  soda ..."): said, never shown;
- over scene 2 of the even videos, the caption of a scene of *another* video ("a blue square moves
  up"): said here, shown elsewhere (the narration disagrees with the pixels).

Labelled queries: 48 *visual* queries (each scene's caption; relevant: the scene that shows it,
12 of them narrated in the wrong video) and 24 *speech* queries (the words of four letters or more of each cooking
instruction; relevant: the scene it is said over); *mixed* is both sets. A query is answered when
a returned moment (top 1 / top 5, ``k=5`` merged moments) is in the relevant video and overlaps
the relevant scene. Methods: ``visual``, ``speech``, ``hybrid`` at several speech weights (the
calibrated blend of ``milnce.index.hybrid``) and reciprocal rank fusion (RRF, ``1/(60 + rank)``
summed over the full visual and speech window rankings: k-independent, for comparison), scored
at the window level for RRF (its windows, best first, distinct by scene).

    python benchmarks/eval_hybrid.py [--model fallback|random] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

COOKING = [
    "now add two teaspoons of baking soda", "whisk the eggs until fluffy", "slice the onions very thin",
    "preheat the oven to two hundred degrees", "season the chicken with pepper", "knead the dough for ten minutes",
    "melt the butter in a small pan", "grate some fresh parmesan cheese", "simmer the sauce on low heat",
    "peel and dice three potatoes", "drain the pasta and keep some water", "toast the bread until golden",
    "squeeze half a lemon over the fish", "stir in a cup of rice", "chop the parsley finely",
    "fold the flour into the batter", "rinse the lentils under cold water", "crack the walnuts open",
    "brush the crust with olive oil", "sprinkle sea salt on the tomatoes", "blend the soup until smooth",
    "marinate the tofu overnight", "roast the garlic cloves", "garnish with chopped chives",
]


def srt(cues: list[tuple[float, float, str]]) -> str:
    def t(x: float) -> str:
        ms = int(round(x * 1000))
        return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"

    return "".join(f"{i}\n{t(a)} --> {t(b)}\n{text}\n\n" for i, (a, b, text) in enumerate(cues, 1))


def load(kind: str):  # type: ignore[no-untyped-def]
    import milnce
    from milnce.train.fallback import fallback_model, held_out, held_out_data

    if kind == "fallback":
        fm = fallback_model(progress=False)
        return milnce.load_model(fm.run, download=False), held_out(fm.data), {"fps": 4.0, "num_frames": 8,
                                                                              "size": 32, "stride": 4}
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import write_checkpoint

    ck = write_checkpoint(Path(tempfile.mkdtemp()), calibrate=True)
    return milnce.load_model(*ck, download=False), held_out(held_out_data(progress=False)), {
        "fps": 4.0, "num_frames": 8, "size": 32, "stride": 4}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=("fallback", "random"), default="fallback")
    ap.add_argument("--weights", type=float, nargs="*", default=[0.1, 0.25, 0.5, 1.0, 2.0])
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    from milnce.index import Index, build_index
    from milnce.windows import WindowSettings

    t0 = time.perf_counter()
    model, (videos, captions), win = load(args.model)
    work = Path(tempfile.mkdtemp(prefix="eval_hybrid_"))
    coll = work / "videos"
    coll.mkdir()
    truth: list[tuple[str, str, str, float, float]] = []  # kind, query, video name, start, end
    scene = 4.0
    for i, v in enumerate(sorted(videos)):
        dst = coll / v.name
        shutil.copy(v, dst)  # links leading out of the collection are not followed
        caps = captions[v.name]
        cues = [(0.3, scene - 0.3, COOKING[i % len(COOKING)])]
        if i % 2 == 0:  # narrated, not shown: another video's scene
            other = sorted(videos)[(i + 5) % len(videos)].name
            cues.append((scene + 0.3, 2 * scene - 0.3, captions[other][1]))
        dst.with_suffix(".en.srt").write_text(srt(cues), encoding="utf-8")
        for s, cap in enumerate(caps):
            truth.append(("visual", cap, v.name, s * scene, (s + 1) * scene))
        words = COOKING[i % len(COOKING)].split()
        truth.append(("speech", " ".join(w for w in words if len(w) > 3)[:60], v.name, 0.0, scene))
    build_index([coll], work / "ix", model, progress=False, window=WindowSettings.for_model(model, **win))
    idx = Index.open(work / "ix", model)

    def hit(moments: list, name: str, a: float, b: float, n: int) -> bool:
        return any(Path(m.path).name == name and m.start < b and m.end > a for m in moments[:n])

    rows: dict[str, dict[str, float]] = {}
    texts = [q for _, q, *_ in truth]
    emb, _ = idx.encode_queries(texts)  # zero rows for words the model does not know (cooking words)

    def run(method: str, search) -> None:  # type: ignore[no-untyped-def]
        got = {"visual": [0, 0, 0], "speech": [0, 0, 0]}
        for (kind, q, name, a, b), e in zip(truth, emb):
            res = search(q, e)
            got[kind][0] += hit(res, name, a, b, 1)
            got[kind][1] += hit(res, name, a, b, 5)
            got[kind][2] += 1
        out = {}
        for kind, (r1, r5, n) in got.items():
            out[f"{kind} R@1"], out[f"{kind} R@5"] = 100 * r1 / n, 100 * r5 / n
        n = got["visual"][2] + got["speech"][2]
        out["mixed R@1"] = 100 * (got["visual"][0] + got["speech"][0]) / n
        out["mixed R@5"] = 100 * (got["visual"][1] + got["speech"][1]) / n
        rows[method] = {k: round(v, 1) for k, v in out.items()}

    run("visual", lambda q, e: idx.search_embeddings(e, 5)[0])
    run("speech", lambda q, e: idx.search_embeddings(e, 5, speech_text=[q], mode="speech")[0])
    for w in args.weights:
        run(f"hybrid w={w:g}", lambda q, e, w=w: idx.search_embeddings(e, 5, speech_text=[q], mode="hybrid",
                                                                      speech_weight=w)[0])
    run("RRF (windows)", lambda q, e: rrf(idx, q, e))
    out = {"model": args.model, "videos": len(videos), "queries": {"visual": 48, "speech": len(videos)},
           "machine": f"{platform.machine()}, {os.cpu_count()} cores", "seconds": round(time.perf_counter() - t0, 1),
           "results": rows}
    print(json.dumps(out, indent=2))
    print("\n| method | visual R@1 | visual R@5 | speech R@1 | speech R@5 | mixed R@1 | mixed R@5 |\n|---|---|---|---|---|---|---|")
    for m, r in rows.items():
        print(f"| {m} | " + " | ".join(f"{r[k]:.1f}" for k in ("visual R@1", "visual R@5", "speech R@1", "speech R@5",
                                                              "mixed R@1", "mixed R@5")) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    idx.close()


class _W:
    """A window as a result (path, start, end) for the recall check."""

    def __init__(self, path: str, start: float, end: float) -> None:
        self.path, self.start, self.end = path, start, end


def rrf(idx, q: str, e: np.ndarray, c: float = 60.0) -> list:  # type: ignore[no-untyped-def]
    """Reciprocal rank fusion over the full visual and speech window rankings."""
    snap = idx.snapshot
    vis = np.asarray(snap.scores(e[None]))[0]
    plan = idx.speech_plans(snap, [q], e[None], "speech", None)[0]
    rank_v = np.empty(len(vis))
    rank_v[np.argsort(-vis, kind="stable")] = np.arange(1, len(vis) + 1)
    score = 1.0 / (c + rank_v)
    if plan is not None and len(plan.rows):
        order = np.argsort(-plan.scores, kind="stable")
        score[plan.rows[order]] += 1.0 / (c + np.arange(1, len(order) + 1))
    best = np.argsort(-score, kind="stable")
    pos = snap.positions(best[:200])
    _, _, vids = snap.ranges()
    out, seen = [], set()
    for r, p in zip(best[:200].tolist(), pos.tolist()):
        rec = snap.records[int(vids[p])]
        key = (rec.id, int(snap.times[r, 0] // 4.0))
        if key in seen:
            continue
        seen.add(key)
        out.append(_W(rec.path, float(snap.times[r, 0]), float(snap.times[r, 1])))
        if len(out) == 5:
            break
    return out


if __name__ == "__main__":
    main()
