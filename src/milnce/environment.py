"""What ``milnce info`` reports: versions, the optional extras installed, the cache folder, the
state of each registry model's cached files and their download sources, and what
``MILNCE_WEIGHTS``/``MILNCE_VOCAB`` point at (checked, never imported or downloaded)."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

__all__ = ["EXTRAS", "environment_report", "extras", "env_file_status", "cache_entry", "source_lines"]

EXTRAS = {  # import name -> distributions that provide it (first one installed is reported)
    "faiss": ("faiss-cpu", "faiss-gpu", "faiss"),
    "fastapi": ("fastapi",),
    "uvicorn": ("uvicorn",),
    "matplotlib": ("matplotlib",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
    "sklearn": ("scikit-learn",),
    "yaml": ("pyyaml", "PyYAML"),
    "av": ("av",),
    "safetensors": ("safetensors",),
}


def environment_report() -> dict[str, Any]:
    """The report, as ``milnce info --json`` prints it: versions, threads, CUDA, the cache folder,
    the environment's weights and vocabulary, the extras and, per registry model, its cached
    files (``cache_entry``), input conventions and sources (``source_lines``)."""
    import numpy as np
    import torch

    from . import __version__
    from .cache import cache_dir
    from .weights import REGISTRY

    cache = cache_dir()
    weights = {}
    for name, info in REGISTRY.items():
        weights[name] = {
            "weights": cache_entry(cache / info.filename, info.num_bytes, info.url),
            "vocab": cache_entry(cache / info.vocab_filename, info.vocab_num_bytes, info.vocab_url),
            "inputs": info.transforms,
            "sources": source_lines(info),
        }
    env_weights, env_vocab = os.environ.get("MILNCE_WEIGHTS") or None, os.environ.get("MILNCE_VOCAB") or None
    report: dict[str, Any] = {
        "milnce": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "cache": str(cache),
        "MILNCE_WEIGHTS": env_file_status("weights", env_weights),
        "MILNCE_VOCAB": env_file_status("vocab", env_vocab),
        "extras": extras(),
        "weights": weights,
    }
    report["av"] = report["extras"]["av"]  # kept at the top level for older readers of --json
    return report


def extras() -> dict[str, str | None]:
    """Installed version of each optional dependency (None if missing), without importing it."""
    from importlib import metadata
    from importlib.util import find_spec

    found: dict[str, str | None] = {}
    for module, dists in EXTRAS.items():
        version = None
        for dist in dists:
            try:
                version = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
        if version is None and find_spec(module) is not None:
            version = "installed (version unknown)"
        found[dists[0] if module != "sklearn" else "scikit-learn"] = version
    return found


def env_file_status(kind: str, value: str | None) -> str | None:
    """What ``MILNCE_WEIGHTS`` (``kind`` "weights") or ``MILNCE_VOCAB`` ("vocab") points at: size
    and whether it loads and verifies (None when unset)."""
    if not value:
        return None
    from .text import VocabularyError, load_vocab
    from .weights import REGISTRY, CheckpointError, load_verified

    if kind == "weights" and value in REGISTRY:
        return f"{value} (registry name: the cached files below)"
    path = os.path.expanduser(value)
    if not os.path.exists(path):
        return f"{path}: MISSING (no such file or folder)"
    size = "" if os.path.isdir(path) else f"{os.path.getsize(path):,} bytes, "
    try:
        if kind == "weights":
            ckpt = load_verified(path)
            words = ckpt.spec.vocab_size - 1
            return f"{path} ({size}verified: {words:,} words, weights id {ckpt.fingerprint})"
        return f"{path} ({size}{len(load_vocab(path)):,} words)"
    except (CheckpointError, VocabularyError, OSError) as exc:
        return f"{path} ({size}NOT USABLE: {exc})"


def cache_entry(path: Path, size: int, url: str) -> str:
    """The state of one cached file of ``size`` bytes published at ``url``: not downloaded, of
    another size, damaged (its recorded checksum), unreadable, or its path and size."""
    from .download import DownloadError, verify_cached_file

    if not path.exists():
        return f"not downloaded (expected {size:,} bytes from {url})"
    have = path.stat().st_size
    if have != size:
        return f"{path} ({have:,} bytes, expected {size:,}: not the published file)"
    try:
        verify_cached_file(path)
    except DownloadError as exc:
        return f"{path} ({have:,} bytes, DAMAGED: {exc})"
    except OSError as exc:
        return f"{path} ({have:,} bytes, unreadable: {exc})"
    return f"{path} ({have:,} bytes)"


def source_lines(info: Any) -> list[str] | str:
    """Where missing files would be downloaded from, in order (``milnce.mirrors``), one line per
    source; the reason when the mirror list is unusable."""
    from .mirrors import MirrorError, sources

    try:
        found = sources(info)
    except MirrorError as exc:
        return f"unusable mirror list: {exc}"
    return [s.weights_url + ("" if s.vocab_url.endswith("/" + info.vocab_filename) else f" + {s.vocab_url}")
            + f" ({s.origin})" for s in found]
