"""Whole-video encoding: ``encode_video_file`` (windows -> embeddings, decoding overlapped with
the model) and its result ``VideoEmbeddings`` with the ``.npz`` format of ``milnce embed-video``."""

from __future__ import annotations

import os
import queue
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..atomic import atomic_file
from ..errors import MilnceError, UsageError
from ..protocols import VideoEncoder
from ..windows import WindowSettings
from .clips import clips_to_tensor
from .decode import Clip, ClipReader

__all__ = ["VideoEmbeddings", "EmbeddingsFileError", "encode_video_file"]


class EmbeddingsFileError(MilnceError, ValueError):
    """A saved embeddings file (``.npz``/``.npy``) that is missing or not in the expected format."""


@dataclass
class VideoEmbeddings:
    """Per-window embeddings of one video (``encode_video_file``).

    ``starts``/``ends``: float64 seconds (N); ``embeddings``: float32 ``N x 512``; ``features``:
    float32 ``N x 1024`` (mixed_5c) or None; ``duration``: the video's duration in seconds;
    ``stats``: timings (``wall_s``, ``wait_s`` = time the model waited for frames,
    ``wait_share``, ``model_s``, ``decode_s``)."""

    path: str
    starts: np.ndarray
    ends: np.ndarray
    embeddings: np.ndarray
    features: np.ndarray | None
    duration: float
    stats: dict[str, float] = field(default_factory=dict)
    settings: WindowSettings | None = None

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])

    def to_npz_dict(self) -> dict[str, np.ndarray]:
        """Arrays for ``np.savez`` (all loadable with ``allow_pickle=False``)."""
        out: dict[str, np.ndarray] = {
            "embeddings": np.ascontiguousarray(self.embeddings, dtype=np.float32),
            "starts": np.asarray(self.starts, dtype=np.float64),
            "ends": np.asarray(self.ends, dtype=np.float64),
            "path": np.asarray(str(self.path), dtype=np.str_),
            "duration": np.asarray(self.duration, dtype=np.float64),
        }
        if self.features is not None:
            out["features"] = np.ascontiguousarray(self.features, dtype=np.float32)
        if self.settings is not None:
            out["fps"] = np.asarray(self.settings.fps, dtype=np.float64)
            for key in ("num_frames", "size", "stride"):
                out[key] = np.asarray(getattr(self.settings, key), dtype=np.int64)
        return out

    def save(self, target: str | os.PathLike[str]) -> None:
        """Write the ``.npz`` of ``to_npz_dict()`` atomically (temporary file in the same folder,
        fsync, rename): an interrupted run never leaves a half-written file under ``target``."""
        with atomic_file(target) as f:
            np.savez(f, **self.to_npz_dict())  # type: ignore[arg-type]

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> VideoEmbeddings:
        """Read embeddings saved by ``save`` / ``milnce embed-video`` (``.npz``), or a plain
        ``N x D`` (or ``D``) ``.npy`` array (its window times are unknown: NaN). Pickle-free.
        Raises ``EmbeddingsFileError`` for anything else."""
        p = os.fspath(path)
        if not os.path.exists(p):
            raise EmbeddingsFileError(f"video embeddings not found: {p}")
        try:
            data = np.load(p, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise EmbeddingsFileError(f"{p}: not a readable .npy/.npz file ({exc})") from exc
        settings = None
        if isinstance(data, np.lib.npyio.NpzFile):
            with data:
                # milnce extract / embed-video files (video_embedding, start, end, mixed_5c) or the older keys
                key = next((k for k in ("video_embedding", "embeddings") if k in data), None)
                if key is None:
                    raise EmbeddingsFileError(f"{p}: .npz without a 'video_embedding' array (keys: {', '.join(data.files)})")
                emb = data[key]
                starts = next((data[k] for k in ("start", "starts") if k in data), np.arange(len(emb), dtype=np.float64))
                ends = next((data[k] for k in ("end", "ends") if k in data), starts)
                features = next((data[k] for k in ("mixed_5c", "features") if k in data), None)
                duration = float(data["duration"]) if "duration" in data else float("nan")
                source = str(data["path"]) if "path" in data else p
                if all(k in data for k in ("fps", "num_frames", "size", "stride")):
                    try:
                        settings = WindowSettings(fps=float(data["fps"]), num_frames=int(data["num_frames"]),
                                                  size=int(data["size"]), stride=int(data["stride"]))
                    except UsageError:
                        settings = None
        else:
            emb = data[None] if data.ndim == 1 else data
            starts = ends = np.full(len(emb), np.nan)
            features, duration, source = None, float("nan"), p
        if emb.ndim != 2:
            raise EmbeddingsFileError(f"{p}: expected an N x D array of embeddings, got shape {emb.shape}")
        return cls(path=source, starts=np.asarray(starts, dtype=np.float64), ends=np.asarray(ends, dtype=np.float64),
                   embeddings=emb.astype(np.float32), features=features, duration=duration, settings=settings)


_DONE = object()


def encode_video_file(model: VideoEncoder, path: str | os.PathLike[str], *, fps: float | None = None,
                      num_frames: int | None = None, size: int | None = None, stride: int | None = None,
                      start: float | None = None, end: float | None = None, batch_size: int = 4,
                      features: bool = False, progress: bool = False, crop: str = "center",
                      pad: str = "repeat", threads: int = 0) -> VideoEmbeddings:
    """Embed every window of a video: ``read_clips`` windows -> ``model.encode_video``.

    ``fps``/``num_frames``/``size``/``stride`` default to the model's input conventions
    (``WindowSettings.for_model(model)``; the published weights: 10 fps, 32 frames, 224 px, a
    window every 16 frames). A background thread decodes the next batch while the model runs on the current one
    (a queue of two batches bounds the memory). Returns ``VideoEmbeddings`` with per-window
    ``starts``/``ends`` (seconds), ``embeddings`` (N x 512) and, with ``features=True``, the
    ``mixed_5c`` features (N x 1024); ``stats`` holds the share of time spent waiting for frames.
    """
    w = WindowSettings.for_model(model, fps=fps, num_frames=num_frames, size=size, stride=stride, crop=crop)
    fps, num_frames, size, stride = w.fps, w.num_frames, w.size, w.stride
    if int(batch_size) < 1:
        raise UsageError(f"batch_size must be >= 1, got {batch_size!r}")
    batch_size = int(batch_size)
    messages: list[str] = []
    reader = ClipReader(path, fps, num_frames, size, stride, start, end, w.crop, pad, threads=threads,
                         warn=messages.append)
    q: queue.Queue[Any] = queue.Queue(maxsize=2)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        it = iter(reader)
        try:
            batch: list[Clip] = []
            for clip in it:
                batch.append(clip)
                if len(batch) == batch_size:
                    if not put(batch):
                        return
                    batch = []
            if batch and not put(batch):
                return
            put(_DONE)
        except BaseException as exc:  # handed to the consumer
            put(exc)
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=reader.estimated_windows(), unit="clip", desc=os.path.basename(reader.path), leave=False)
    t_start = time.perf_counter()
    worker = threading.Thread(target=produce, name="milnce-video-decode", daemon=True)
    worker.start()
    starts: list[float] = []
    ends: list[float] = []
    embs: list[torch.Tensor] = []
    feats: list[torch.Tensor] = []
    wait_s = model_s = 0.0
    try:
        while True:
            t0 = time.perf_counter()
            item = q.get()
            wait_s += time.perf_counter() - t0
            if item is _DONE:
                break
            if isinstance(item, BaseException):
                raise item
            x = clips_to_tensor(item)
            t1 = time.perf_counter()
            out = model.encode_video(x, features=True, batch_size=batch_size)
            emb, mix = out  # type: ignore[misc]
            model_s += time.perf_counter() - t1
            embs.append(emb.float().cpu())
            if features:
                feats.append(mix.float().cpu())
            starts += [c.start for c in item]
            ends += [c.end for c in item]
            if bar is not None:
                bar.update(len(item))
    finally:
        stop.set()
        worker.join(timeout=30)
        if bar is not None:
            bar.close()
        for m in messages:
            warnings.warn(m, RuntimeWarning, stacklevel=2)
    wall = time.perf_counter() - t_start
    emb_np = torch.cat(embs).numpy().astype(np.float32, copy=False)
    feat_np = torch.cat(feats).numpy().astype(np.float32, copy=False) if features else None
    duration = reader.duration
    stats = {"wall_s": wall, "wait_s": wait_s, "wait_share": wait_s / wall if wall > 0 else 0.0,
             "model_s": model_s, "decode_s": reader.sampler.decode_s, "windows": float(len(starts))}
    return VideoEmbeddings(
        path=reader.path,
        starts=np.asarray(starts, dtype=np.float64),
        ends=np.asarray(ends, dtype=np.float64),
        embeddings=emb_np,
        features=feat_np,
        duration=float(duration) if duration is not None else float("nan"),
        stats=stats,
        settings=w,
    )
