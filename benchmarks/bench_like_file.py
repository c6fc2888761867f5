"""Query by any clip (``milnce search --like-file``): which combination of a clip's windows ranks
the source video's own windows first, and how a still image (a frozen clip) compares.

The model: the synthetic (fallback) model that ``milnce demo`` trains when the published weights
are unreachable (``milnce.train.fallback``: cached in ``$MILNCE_HOME``, built on first use, about
1.5 minutes on 2 cores); the collection: its 24 held-out videos (two 4 s scenes each: a coloured
shape moving in one of four directions), indexed with the model's window settings (8 frames at
4 fps, 32 px, a window every 1 s). For each video two queries: a copy of its 0.5-3.5 s span
(the first scene) re-encoded at another size (a user's copy), and a PNG of its frame at 2 s (a
still: the shape and colour, not the direction). Reported per method: the rank of the source
video's best window among all windows (single windows, no merging) and the rank of the source
video among the videos (by its best window).

    PYTHONPATH=src python benchmarks/bench_like_file.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

SCALE = 0.75  # the query copies' size, relative to the source
SCENE_SECONDS = 4.0  # the synthetic set's scenes


def write_frames(path: Path, frames: list[np.ndarray], rate: float) -> None:
    import av

    h, w = frames[0].shape[:2]
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=Fraction(rate).limit_denominator(1000),
                           options={"crf": "18", "preset": "ultrafast"})
        s.width, s.height, s.pix_fmt = w - w % 2, h - h % 2, "yuv420p"
        for i, img in enumerate(frames):
            f = av.VideoFrame.from_ndarray(np.ascontiguousarray(img[: s.height, : s.width]), format="rgb24")
            f.pts, f.time_base = i, 1 / Fraction(rate).limit_denominator(1000)
            for p in s.encode(f):
                out.mux(p)
        for p in s.encode(None):
            out.mux(p)


def read_frames(path: Path) -> tuple[list[np.ndarray], float]:
    import av

    with av.open(str(path)) as c:
        rate = float(c.streams.video[0].average_rate or 10)
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)], rate


def resize(frames: list[np.ndarray], scale: float) -> list[np.ndarray]:
    import av

    out = []
    for img in frames:
        f = av.VideoFrame.from_ndarray(img, format="rgb24")
        out.append(f.reformat(width=int(img.shape[1] * scale) // 2 * 2, height=int(img.shape[0] * scale) // 2 * 2,
                              format="rgb24").to_ndarray())
    return out


def collection(tmp: Path) -> tuple[object, list[Path], dict[str, list[str]]]:
    """(model, videos, captions by video stem in scene order): the synthetic model and its held-out videos."""
    import milnce
    from milnce.train.fallback import fallback_model, held_out

    fb = fallback_model(progress=False)
    vids, caps = held_out(fb.data)
    return milnce.load_model(fb.run), vids, {Path(k).stem: v for k, v in caps.items()}


def main() -> None:
    from milnce.index import Index, build_index
    from milnce.index.likeclip import clip_query, combine_windows
    from milnce.video.encode import encode_video_file
    from milnce.windows import WindowSettings

    tmp = Path(tempfile.mkdtemp(prefix="bench-like-"))
    model, videos, captions = collection(tmp)
    queries = tmp / "queries"
    queries.mkdir()
    import av

    for v in videos:
        fr, rate = read_frames(v)
        a, b = int(round(0.5 * rate)), int(round(3.5 * rate))
        write_frames(queries / f"{v.stem}.mp4", resize(fr[a:b], SCALE), rate)
        av.VideoFrame.from_ndarray(fr[int(round(2 * rate))], format="rgb24").to_image().save(queries / f"{v.stem}.png")
    build_index(videos, tmp / "index", model, progress=False)
    index = Index.open(tmp / "index", model)
    snap = index.snapshot
    vecs = np.asarray(snap.vectors[: snap.num_rows], np.float64)
    owner = np.full(len(vecs), -1, np.int64)
    rs, re_, _ = snap.ranges()
    names = {}
    for rec in index.videos():
        pos = snap.position(rec.id)
        owner[int(rs[pos]):int(re_[pos])] = rec.id
        names[rec.id] = Path(rec.path).stem
    w = WindowSettings.from_dict(index.settings)
    mids = (np.asarray(snap.times[: snap.num_rows, 0]) + np.asarray(snap.times[: snap.num_rows, 1])) / 2
    # what a window shows: its video's caption of the scene it is in (4 s scenes), else the video
    label = [captions[names[o]][min(int(t // SCENE_SECONDS), len(captions[names[o]]) - 1)] if captions
             else names[o] for o, t in zip(owner, mids)]

    def ranks(scores: np.ndarray, src: int, want: str) -> tuple[int, int, bool]:
        order = np.argsort(-scores, kind="stable")
        win = int(np.flatnonzero(owner[order] == src)[0]) + 1
        best = {v: scores[owner == v].max() for v in names}
        vid = 1 + sum(1 for v, s in best.items() if s > best[src])
        return win, vid, label[int(order[0])] == want

    def unit(e: np.ndarray) -> np.ndarray:
        return e / np.linalg.norm(e, axis=1)[:, None]

    methods = {
        "mean of L2-normalised (chosen)": lambda e: vecs @ combine_windows(e),
        "plain mean": lambda e: vecs @ e.mean(0),
        "medoid window": lambda e: vecs @ e[np.argmax(unit(e) @ unit(e).sum(0))],
        "max over windows": lambda e: (vecs @ e.T).max(1),
    }
    table: dict[str, list[tuple[int, int, bool]]] = {m: [] for m in methods}
    table["still frame (frozen clip)"] = []
    t_clip, t_still = [], []
    by_name = {v: k for k, v in names.items()}
    for name in (v.stem for v in videos):
        src = by_name[name]
        want = captions[name][0] if captions else name  # the query span is the first scene
        t0 = time.perf_counter()
        ve = encode_video_file(model, queries / f"{name}.mp4", fps=w.fps, num_frames=w.num_frames, size=w.size,
                               stride=w.stride, crop=w.crop)
        t_clip.append(time.perf_counter() - t0)
        e = np.asarray(ve.embeddings, np.float64)
        for m, f in methods.items():
            table[m].append(ranks(f(e), src, want))
        t0 = time.perf_counter()
        cq = clip_query(model, index.settings, queries / f"{name}.png")
        t_still.append(time.perf_counter() - t0)
        table["still frame (frozen clip)"].append(ranks(vecs @ cq.vector.astype(np.float64), src, want))
    print(f"collection: {len(names)} videos, {len(vecs)} windows ({w.num_frames} frames at {w.fps:g} fps, "
          f"{w.size} px, stride {w.stride}); {len(videos)} query clips and stills")
    print(f"{'query':32} {'source window rank':>18} {'rank 1':>7} {'video rank 1':>12} {'top = same action':>17}")
    for m, r in table.items():
        print(f"{m:32} {np.mean([x[0] for x in r]):18.2f} {sum(x[0] == 1 for x in r):>4}/{len(r)} "
              f"{sum(x[1] == 1 for x in r):>9}/{len(r)} {sum(x[2] for x in r):>14}/{len(r)}")
    print(f"embedding one query: clip {1000 * np.median(t_clip):.0f} ms, still {1000 * np.median(t_still):.0f} ms "
          "(median, the whole encode_video_file call)")
    index.close()


if __name__ == "__main__":
    main()
