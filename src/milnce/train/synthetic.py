"""``make_synthetic``: a small generated text-video dataset in the HowTo100M layout.

Each video shows a sequence of scenes; in a scene one coloured shape moves in one direction on
a plain background. In the training split every scene has two captions from a small grammar
("a red square moves left", "the red square is moving left", ...), one per half of the scene.
The held-out split has one caption per scene and shows every (colour, shape, direction)
combination exactly once, so text->video retrieval on it has a known chance level
(1 / number of combinations).

Layout written to ``OUT``::

    train.csv, val.csv        video_id,video_path  (paths relative to OUT)
    captions/<video_id>.csv   start,end,text
    videos/<video_id>.mp4
    vocab.npy                 the grammar's words (the model's vocabulary)
    dataset.json              what was generated; "hflip": false (a flip turns left into right)
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
from fractions import Fraction
from pathlib import Path

import numpy as np

from ..atomic import atomic_file, atomic_path, atomic_write_text
from ..errors import UsageError

__all__ = ["make_synthetic", "COLOURS", "SHAPES", "DIRECTIONS", "TEMPLATES", "grammar_words"]

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 40, 40),
    "green": (40, 200, 70),
    "blue": (50, 90, 235),
    "yellow": (235, 215, 40),
}
SHAPES = ("square", "circle", "triangle")
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
TEMPLATES = (
    "a {c} {s} moves {d}",
    "the {c} {s} is moving {d}",
    "{c} {s} going {d}",
    "watch the {c} {s} move {d}",
)


def grammar_words() -> list[str]:
    """Every word the captions can use, in a fixed order."""
    words: list[str] = []
    for t in TEMPLATES:
        for w in t.replace("{c}", "").replace("{s}", "").replace("{d}", "").split():
            if w not in words:
                words.append(w)
    return words + list(COLOURS) + list(SHAPES) + list(DIRECTIONS)


def _mask(shape: str, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    if shape == "square":
        return np.ones((size, size), bool)
    if shape == "circle":
        r = size / 2
        return (yy - r) ** 2 + (xx - r) ** 2 <= r * r
    # triangle pointing up
    return (yy >= size * 0.05) & (np.abs(xx - size / 2) <= yy / 2)


def _render_scene(rng: np.random.Generator, colour: str, shape: str, direction: str, frames: int,
                  fps: int, width: int) -> list[np.ndarray]:
    side = int(rng.integers(width // 4, width * 3 // 8 + 1))
    speed = float(rng.uniform(0.6, 0.8)) * (width - side) / (frames / fps)  # px per second
    dx, dy = DIRECTIONS[direction]
    travel = speed * frames / fps
    lo, hi = 0.0, width - side
    # start so that the whole path stays inside the frame
    sx = rng.uniform(lo + max(0, -dx) * travel, hi - max(0, dx) * travel)
    sy = rng.uniform(lo + max(0, -dy) * travel, hi - max(0, dy) * travel)
    bg = rng.integers(20, 90, size=3).astype(np.uint8)
    mask = _mask(shape, side)
    rgb = np.array(COLOURS[colour], np.uint8)
    out = []
    for i in range(frames):
        img = np.empty((width, width, 3), np.uint8)
        img[:] = bg
        x = int(round(sx + dx * speed * i / fps))
        y = int(round(sy + dy * speed * i / fps))
        img[y:y + side, x:x + side][mask] = rgb
        out.append(img)
    return out


def _write_video(path: Path, frames: list[np.ndarray], fps: int) -> None:
    import av

    with atomic_path(path, suffix=".mp4") as tmp, av.open(tmp, "w") as out:
        stream = out.add_stream("libx264", rate=Fraction(fps), options={"crf": "18", "preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def _write_csv(path: Path, header: list[str], rows: list[list[object]]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def make_synthetic(
    out: str | os.PathLike[str],
    videos: int = 200,
    val_videos: int = 24,
    seed: int = 0,
    *,
    size: int = 64,
    fps: int = 8,
    scenes: int = 2,
    scene_seconds: float = 4.0,
    progress: bool = True,
) -> Path:
    """Generate ``videos`` training and ``val_videos`` held-out videos (``size`` px square,
    ``scenes`` scenes of ``scene_seconds`` each, ``fps`` frames/s) into ``out``; returns ``out``.

    The held-out videos show the (colour, shape, direction) combinations in a seeded order,
    each once while ``val_videos * scenes`` allows (48 combinations: 24 videos of 2 scenes).
    """
    _check_options(videos, val_videos, size, fps, scenes, scene_seconds)
    root = _new_folder(Path(out))
    rng = np.random.default_rng(seed)
    combos = list(itertools.product(COLOURS, SHAPES, DIRECTIONS))
    frames_per_scene = int(round(scene_seconds * fps))
    val_order = [combos[i] for i in rng.permutation(len(combos))]
    jobs = [("train", i) for i in range(videos)] + [("val", i) for i in range(val_videos)]
    lists: dict[str, list[list[object]]] = {"train": [], "val": []}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc="make-synthetic", unit="video")
    for split, i in jobs:
        vid = f"{split}{i:05d}"
        frames, caps = _render_video(rng, combos, val_order if split == "val" else None, i, scenes,
                                     frames_per_scene, fps, size)
        _write_video(root / "videos" / f"{vid}.mp4", frames, fps)
        _write_csv(root / "captions" / f"{vid}.csv", ["start", "end", "text"], caps)
        lists[split].append([vid, f"videos/{vid}.mp4"])
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.close()
    meta = {
        "generator": "milnce make-synthetic", "seed": seed, "train_videos": videos, "val_videos": val_videos,
        "size": size, "fps": fps, "scenes": scenes, "scene_seconds": frames_per_scene / fps,
        "combinations": len(combos), "val_distinct_captions": min(len(combos), val_videos * scenes),
        "hflip": False,
    }
    _write_lists(root, lists, meta)
    return root


def _check_options(videos: int, val_videos: int, size: int, fps: int, scenes: int, scene_seconds: float) -> None:
    """``UsageError`` for counts that are not whole numbers in range, an odd size (H.264 needs even
    sides) or scenes shorter than a second."""
    for name, value, lo in (("videos", videos, 1), ("val_videos", val_videos, 0), ("size", size, 16),
                            ("fps", fps, 1), ("scenes", scenes, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise UsageError(f"{name} must be a whole number >= {lo}, got {value!r}")
    if size % 2:
        raise UsageError(f"size must be even (H.264 needs even sides), got {size}")
    if not scene_seconds >= 1.0:
        raise UsageError(f"scene_seconds must be >= 1, got {scene_seconds!r}")


def _new_folder(root: Path) -> Path:
    """``root`` with its ``videos`` and ``captions`` folders; ``UsageError`` when it is not empty."""
    if root.exists() and any(root.iterdir()):
        raise UsageError(f"{root} exists and is not empty; choose a new folder")
    (root / "videos").mkdir(parents=True, exist_ok=True)
    (root / "captions").mkdir(exist_ok=True)
    return root


Combo = tuple[str, str, str]  # colour, shape, direction


def _render_video(rng: np.random.Generator, combos: list[Combo], val_order: list[Combo] | None, i: int,
                  scenes: int, frames_per_scene: int, fps: int, size: int) -> tuple[list[np.ndarray], list[list[object]]]:
    """Video ``i``'s frames and caption rows (start, end, text): ``scenes`` scenes, each a
    combination drawn at random (training) or the next ones of ``val_order`` (held out)."""
    seconds = frames_per_scene / fps
    frames: list[np.ndarray] = []
    caps: list[list[object]] = []
    for s in range(scenes):
        if val_order is not None:
            c, sh, d = val_order[(i * scenes + s) % len(val_order)]
        else:
            c, sh, d = combos[int(rng.integers(len(combos)))]
        frames += _render_scene(rng, c, sh, d, frames_per_scene, fps, size)
        caps += _scene_captions(rng, (c, sh, d), s * seconds, seconds, held_out=val_order is not None)
    return frames, caps


def _scene_captions(rng: np.random.Generator, combo: Combo, t0: float, seconds: float, *,
                    held_out: bool) -> list[list[object]]:
    """The caption rows of a scene starting at ``t0``: two (random templates, one per half of the
    scene) in training, one (the first template, the whole scene) held out."""
    c, sh, d = combo
    edges = (t0 + 0.05 * seconds, t0 + 0.5 * seconds, t0 + 0.95 * seconds)
    if held_out:  # one caption per scene, so each combination is one query
        return [[f"{edges[0]:.2f}", f"{edges[2]:.2f}", TEMPLATES[0].format(c=c, s=sh, d=d)]]
    picks = rng.choice(len(TEMPLATES), size=2, replace=False)
    return [[f"{edges[h]:.2f}", f"{edges[h + 1]:.2f}", TEMPLATES[int(picks[h])].format(c=c, s=sh, d=d)]
            for h in range(2)]


def _write_lists(root: Path, lists: dict[str, list[list[object]]], meta: dict[str, object]) -> None:
    """The files beside the videos: each split's list (``train.csv`` always, ``val.csv`` when it
    has videos), ``vocab.npy`` and ``dataset.json`` (``meta``)."""
    for split, rows in lists.items():
        if rows or split == "train":
            _write_csv(root / f"{split}.csv", ["video_id", "video_path"], rows)
    with atomic_file(root / "vocab.npy") as f:
        np.save(f, np.asarray(grammar_words(), dtype=str), allow_pickle=False)
    atomic_write_text(root / "dataset.json", json.dumps(meta, indent=2) + "\n")


def _hms(t: float) -> str:
    ms = int(round(t * 1000))
    return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d}.{ms % 1000:03d}"


def to_shards(root: str | os.PathLike[str], per_shard: int = 50) -> Path:
    """Turn the training split of a make-synthetic folder into webdataset tar shards in the
    video2dataset layout (``KEY.mp4`` + ``KEY.json`` with ``yt_meta_dict.subtitles.en``), in
    ``root/shards/``; ``dataset.json`` then names them (``"shards"``) and ``train.csv``, the
    training videos and their captions go. The held-out split stays a folder (``val.csv``)."""
    try:
        import webdataset as wds
    except ImportError:
        raise UsageError("--format wds needs webdataset (pip install 'milnce[train]')") from None
    import csv

    root = Path(root)
    if isinstance(per_shard, bool) or not isinstance(per_shard, int) or per_shard < 1:
        raise UsageError(f"videos per shard must be a whole number >= 1, got {per_shard!r}")
    with open(root / "train.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    n_shards = max(1, -(-len(rows) // per_shard))
    width = max(5, len(str(n_shards - 1)))
    (root / "shards").mkdir(exist_ok=True)
    for s in range(n_shards):
        final = root / "shards" / f"train-{s:0{width}d}.tar"
        tmp = final.with_name(f".{final.name}.tmp")
        with open(tmp, "wb") as fb, wds.TarWriter(fb) as sink:
            for row in rows[s * per_shard:(s + 1) * per_shard]:
                with open(root / "captions" / f"{row['video_id']}.csv", newline="") as cf:
                    caps = list(csv.DictReader(cf))
                subs = [{"start": _hms(float(c["start"])), "end": _hms(float(c["end"])), "lines": [c["text"]]}
                        for c in caps]
                meta = {"key": row["video_id"], "yt_meta_dict": {"info": None, "subtitles": {"en": subs}}}
                sink.write({"__key__": row["video_id"], "mp4": (root / row["video_path"]).read_bytes(),
                            "json": json.dumps(meta).encode()})
        os.replace(tmp, final)
    for row in rows:
        (root / row["video_path"]).unlink(missing_ok=True)
        (root / "captions" / f"{row['video_id']}.csv").unlink(missing_ok=True)
    (root / "train.csv").unlink()
    meta = json.loads((root / "dataset.json").read_text())
    meta.update({"format": "wds", "shards": f"shards/train-{{{0:0{width}d}..{n_shards - 1:0{width}d}}}.tar",
                 "num_shards": n_shards})
    (root / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
    return root
