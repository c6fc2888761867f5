"""Per-query cost of hybrid (visual + speech) search against visual search on one index.

A synthetic store of ``--windows`` windows (default 200,000: videos of 500 windows drawn around
topic centres, a window every 1.6 s lasting 3.2 s, as ``bench_search.py`` builds them) with a
synthetic transcript: one cue every 3.2 s of each video, 8 words drawn from a 5,000-word
vocabulary with Zipf frequencies (so common words are in many cues, rare ones in few). Queries
are 4 words drawn the same way with a query vector. Each query is searched alone
(``Index.search_embeddings``, k=10, merged moments, exact int8-screened search, no ANN) in
visual, hybrid and speech mode; p50/p95 latency over ``--queries`` queries after a warm-up.

    python benchmarks/bench_hybrid.py [--windows 200000] [--queries 60] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np


def words(n: int = 5000) -> list[str]:
    syll = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pa", "qu", "di", "fo", "gu", "he"]
    out: list[str] = []
    i = 0
    while len(out) < n:
        a, b, c = i % 15, (i // 15) % 15, (i // 225) % 15
        out.append(syll[a] + syll[b] + syll[c] + ("x" if i >= 3375 else ""))
        i += 1
    return out


def zipf_pick(rng: np.random.Generator, vocab: list[str], size: int) -> list[str]:
    p = 1.0 / np.arange(1, len(vocab) + 1)
    p /= p.sum()
    return [vocab[j] for j in rng.choice(len(vocab), size=size, p=p)]


def build(directory: Path, n: int, per_video: int = 500, topics: int = 1000, seed: int = 0) -> tuple[np.ndarray, float, int]:
    from milnce.index import Index
    from milnce.video.subtitles import Cue, SubtitleTrack

    rng = np.random.default_rng(seed)
    vocab = words()
    centers = rng.standard_normal((topics, 512)).astype(np.float32)
    idx = Index.create(directory, SimpleNamespace(weights_id="synthetic", info=None))
    done, v, cues, t0 = 0, 0, 0, time.perf_counter()
    batch, said = [], {}
    while done < n:
        m = min(per_video, n - done)
        c = centers[rng.integers(topics)] + 0.6 * rng.standard_normal(512).astype(np.float32)
        walk = np.cumsum(rng.standard_normal((m, 512)).astype(np.float32) * 0.08, axis=0)
        e = (c + walk + 0.3 * rng.standard_normal((m, 512)).astype(np.float32)) * 0.5
        st = np.arange(m) * 1.6
        path = f"/synthetic/video{v:06d}.mp4"
        batch.append((path, SimpleNamespace(embeddings=e, starts=st, ends=st + 3.2, duration=m * 1.6 + 1.6), 1, 1.0,
                      f"h{v}"))
        k = int(m * 1.6 / 3.2)
        text = zipf_pick(rng, vocab, 8 * k)
        said[path] = ([SubtitleTrack("synthetic", "en", [Cue(3.2 * j, 3.2 * j + 3.0, " ".join(text[8 * j:8 * j + 8]))
                                                         for j in range(k)])], {"synthetic": v})
        cues += k
        done, v = done + m, v + 1
        if sum(len(b[1].embeddings) for b in batch) >= 50_000 or done >= n:
            idx.add_videos(batch, transcripts=said)
            batch, said = [], {}
    idx.close()
    return centers, time.perf_counter() - t0, cues


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--windows", type=int, default=200_000)
    ap.add_argument("--queries", type=int, default=60)
    ap.add_argument("--dir", default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    from milnce.index import Index

    work = Path(args.dir or tempfile.mkdtemp(prefix="bench_hybrid_"))
    centers, build_s, n_cues = build(work / "ix", args.windows)
    rng = np.random.default_rng(1)
    vocab = words()
    nq = args.queries
    qs = (centers[rng.integers(len(centers), size=nq + 5)] + 0.8 * rng.standard_normal((nq + 5, 512))).astype(np.float32) * 0.5
    texts = [" ".join(zipf_pick(rng, vocab, 4)) for _ in range(nq + 5)]
    out: dict[str, object] = {"windows": args.windows, "cues": n_cues, "build_s": round(build_s, 1),
                              "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.processor() or ''}".strip(),
                              "python": platform.python_version()}
    with Index.open(work / "ix") as idx:
        for mode in ("visual", "hybrid", "speech"):
            times = []
            for i in range(nq + 5):
                t0 = time.perf_counter()
                if mode == "visual":
                    idx.search_embeddings(qs[i], 10, exact=True)
                else:
                    idx.search_embeddings(qs[i], 10, exact=True, speech_text=[texts[i]], mode=mode)
                if i >= 5:  # warm-up: page cache, memoised samples
                    times.append((time.perf_counter() - t0) * 1000)
            out[mode] = {"p50_ms": round(float(np.percentile(times, 50)), 2),
                         "p95_ms": round(float(np.percentile(times, 95)), 2),
                         "mean_ms": round(float(np.mean(times)), 2)}
    out["hybrid_over_visual_p50"] = round(out["hybrid"]["p50_ms"] / out["visual"]["p50_ms"], 2)  # type: ignore[index]
    out["hybrid_over_visual_mean"] = round(out["hybrid"]["mean_ms"] / out["visual"]["mean_ms"], 2)  # type: ignore[index]
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
