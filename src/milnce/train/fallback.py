"""The fallback model: a small S3D trained here on generated videos, for a demo that works anywhere.

When the published weights cannot be had, ``milnce demo`` trains this model on the synthetic set
(``make_synthetic``: coloured shapes moving in four directions, captions from a small grammar) and
indexes the set's held-out videos. The result is cached in ``$MILNCE_HOME/fallback/synthetic-KEY``
(KEY: a hash of the recipe and the code version), built in a temporary folder and renamed into
place when complete, so the second run is instant and a stale cache is rebuilt.

The recipe (:data:`RECIPE`) is the README's synthetic recipe, shortened to fit the demo's budget
(2 CPU cores, first run <= 5 minutes). ``$MILNCE_FALLBACK_RECIPE`` (JSON) overrides any of its
values, e.g. ``{"videos": 16, "steps": 2}`` for a tiny model in tests.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_write_text, temp_name
from ..cache import cache_dir, locked
from ..errors import UsageError
from .synthetic import make_synthetic

__all__ = ["RECIPE", "RECIPE_ENV", "FallbackModel", "fallback_model", "fallback_root", "held_out", "held_out_data",
           "recipe", "recipe_key"]

logger = logging.getLogger("milnce.fallback")

RECIPE_ENV = "MILNCE_FALLBACK_RECIPE"
FORMAT = 1  # bump when the folder layout or the way it is built changes

#: data (``make_synthetic``) and training (``TrainConfig``) settings of the fallback model
RECIPE: dict[str, Any] = {
    # data
    "videos": 200, "val_videos": 24, "video_size": 48, "video_fps": 8, "data_seed": 0,
    # training (the README's examples/train_synthetic.yaml, 150 steps instead of 400)
    "fps": 4.0, "num_frames": 8, "size": 32, "decode_size": 40, "min_time": 2.0, "num_candidates": 2,
    "batch_size": 16, "lr": 1.0e-3, "head_lr_mult": 0.1, "warmup_steps": 30, "steps": 150,
    "workers": 1, "threads": 1, "seed": 0,
}
_DATA_KEYS = ("videos", "val_videos", "video_size", "video_fps", "data_seed")
DONE_FILE = "fallback.json"


@dataclass(frozen=True)
class FallbackModel:
    """A built fallback model: ``run`` (a ``milnce train`` run folder: ``load_model(run)``), the
    held-out ``videos`` and their ``captions`` (video file name -> captions, in scene order)."""

    root: Path
    key: str
    built: bool  # True when this call trained it, False when it came from the cache
    seconds: float  # how long building it took (when it was built)
    held_out: dict[str, float]  # held-out retrieval of the last evaluation (R@1, R@5, ...)

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def data(self) -> Path:
        return self.root / "data"



def held_out(data: Path) -> tuple[list[Path], dict[str, list[str]]]:
    """A synthetic set's held-out videos and their captions (file name -> captions in scene order)."""
    videos, captions = [], {}
    for vid, rel in zip(_column(data / "val.csv", "video_id"), _column(data / "val.csv", "video_path")):
        videos.append(data / rel)
        captions[(data / rel).name] = _column(data / "captions" / f"{vid}.csv", "text")
    return videos, captions


def _column(path: Path, name: str) -> list[str]:
    with open(path, newline="", encoding="utf-8") as f:
        return [row[name] for row in csv.DictReader(f)]


def held_out_data(settings: dict[str, Any] | None = None, *, progress: bool = True) -> Path:
    """The held-out videos of the fallback recipe's synthetic set, without training (for the
    published weights when the demo GIFs cannot be downloaded): generated once into the cache."""
    settings = recipe() if settings is None else settings
    data = {k: settings[k] for k in _DATA_KEYS}
    built = fallback_root(settings) / "data"
    if (built / "val.csv").is_file():
        return built
    home = cache_dir() / "demo"
    home.mkdir(parents=True, exist_ok=True)
    root = home / f"synthetic-{recipe_key({**data, 'videos': 1})}"
    with locked(root):
        if not (root / "val.csv").is_file():
            tmp = Path(temp_name(root))
            try:
                make_synthetic(tmp, 1, data["val_videos"], data["data_seed"], size=data["video_size"],
                               fps=data["video_fps"], progress=progress)
                shutil.rmtree(root, ignore_errors=True)
                os.rename(tmp, root)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return root


def fallback_root(settings: dict[str, Any]) -> Path:
    """The cache folder of the fallback model of ``settings``."""
    return cache_dir() / "fallback" / f"synthetic-{recipe_key(settings)}"


def recipe() -> dict[str, Any]:
    """:data:`RECIPE` with ``$MILNCE_FALLBACK_RECIPE``'s values over it."""
    out = dict(RECIPE)
    raw = os.environ.get(RECIPE_ENV, "").strip()
    if raw:
        try:
            extra = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise UsageError(f"${RECIPE_ENV} is not JSON: {exc}") from None
        if not isinstance(extra, dict) or any(k not in RECIPE for k in extra):
            raise UsageError(f"${RECIPE_ENV} must be a JSON object with keys among {', '.join(RECIPE)}")
        out.update(extra)
    return out


def recipe_key(settings: dict[str, Any]) -> str:
    """The cache key of a recipe: its settings, the milnce version and :data:`FORMAT`."""
    from .. import __version__

    blob = json.dumps({"recipe": settings, "version": __version__, "format": FORMAT}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def fallback_model(settings: dict[str, Any] | None = None, *, progress: bool = True) -> FallbackModel:
    """The cached fallback model of ``settings`` (default :func:`recipe`), built first if needed."""
    settings = recipe() if settings is None else settings
    key = recipe_key(settings)
    root = fallback_root(settings)
    home = root.parent
    home.mkdir(parents=True, exist_ok=True)
    found = _load(root, key)
    if found is not None:
        return found
    with locked(root):
        found = _load(root, key)  # another process may have built it meanwhile
        if found is not None:
            return found
        start = time.monotonic()
        tmp = Path(temp_name(root))
        try:
            held_out = _build(tmp, settings, progress)
            seconds = time.monotonic() - start
            atomic_write_text(tmp / DONE_FILE, json.dumps({"key": key, "recipe": settings, "seconds": seconds,
                                                           "held_out": held_out}, indent=2) + "\n")
            shutil.rmtree(root, ignore_errors=True)  # an incomplete folder left by hand
            os.rename(tmp, root)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        for stale in home.glob("synthetic-*"):  # another recipe or code version: never used again
            if stale.name != root.name and stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
    return FallbackModel(root, key, True, seconds, held_out)


def _load(root: Path, key: str) -> FallbackModel | None:
    try:
        done = json.loads((root / DONE_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(done, dict) or done.get("key") != key:
        return None
    return FallbackModel(root, key, False, float(done.get("seconds", 0.0)), dict(done.get("held_out") or {}))


def _build(tmp: Path, settings: dict[str, Any], progress: bool) -> dict[str, float]:
    from .config import TrainConfig
    from .dist import init_distributed
    from .trainer import train

    data = make_synthetic(tmp / "data", settings["videos"], settings["val_videos"], settings["data_seed"],
                          size=settings["video_size"], fps=settings["video_fps"], progress=progress)
    train_settings = {k: v for k, v in settings.items() if k not in _DATA_KEYS}
    steps = int(train_settings["steps"])
    cfg = TrainConfig.from_dict({**train_settings, "data": str(data), "eval_every": steps, "save_every": steps,
                                 "keep_checkpoints": 1, "progress": progress}, "the fallback recipe")
    cfg = cfg.with_(schedule_steps=cfg.steps).validate()
    threads = torch.get_num_threads()
    try:
        last = train(cfg, tmp / "run", ctx=init_distributed(cfg.device))
    finally:
        torch.set_num_threads(threads)  # the trainer's setting is not the indexing's
    for video in (data / "videos").glob("train*.mp4"):  # only the held-out videos are used from now on
        video.unlink()
    ev = last.get("eval") or {}
    return {k: float(v) for k, v in ev.items() if k in ("R@1", "R@5", "R@10", "median_rank", "n")}
