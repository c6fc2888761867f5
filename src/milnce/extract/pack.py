"""``milnce pack``: recipe features into the packed files the consumers' training code reads.

An explicit, opt-in *export*: these formats are pickles, which milnce writes here on request
and never reads. Layouts (confirmed from the consumers' sources):

* UniVL (ArrowLuo/VideoFeatureExtractor ``convert_video_feature_to_pickle.py``): one pickled
  ``dict`` ``{key: np.ndarray}`` over every ``*.npy`` below the feature folder, the key being
  the file name cut at the dot; files whose name holds more than one dot are skipped by that
  script, so they are refused here (naming them).
* VideoCLIP / MMPT (fairseq ``examples/MMPT/scripts/video_feature_extractor/shard_feature.py``
  with ``mmpt.utils.ShardedTensor``): the video ids of a split (a list file, in order) in
  shards of ``shard_size`` (4096); shard ``i`` is ``{split}_{i}_data.npy`` (the videos' rows
  concatenated) and ``{split}_{i}_starts.npy`` (int64 row offsets, ``len = videos + 1``,
  starting at 0); ``{split}_meta.pkl`` is a pickled ``{i: [video ids of shard i]}``.
"""

from __future__ import annotations

import io
import os
import pickle
from collections.abc import Sequence

import numpy as np

from ..atomic import atomic_write_bytes
from ..errors import UsageError
from .store import StoreError

__all__ = ["pack_univl", "pack_videoclip"]


def _ids(feature_dir: str) -> list[str]:
    if not os.path.isdir(feature_dir):
        raise UsageError(f"{feature_dir}: no such folder")
    names = sorted(n for n in os.listdir(feature_dir) if n.endswith(".npy") and not n.startswith("."))
    if not names:
        raise UsageError(f"{feature_dir}: no .npy feature files (write them with milnce extract --recipe)")
    return [n[:-4] for n in names]


def _load(feature_dir: str, vid: str) -> np.ndarray:
    p = os.path.join(feature_dir, vid + ".npy")
    try:
        return np.load(p, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise UsageError(f"{p}: not a readable feature file ({exc})") from exc


def _write(path: str, data: bytes) -> None:
    try:
        atomic_write_bytes(path, data)
    except OSError as exc:
        raise StoreError(f"cannot write {path}: {exc.strerror or exc}") from exc


def pack_univl(feature_dir: str, out_file: str) -> int:
    """The UniVL pickle of every ``DIR/<video_id>.npy``; returns the number of videos."""
    ids = _ids(feature_dir)
    dotted = [v for v in ids if "." in v]
    if dotted:
        raise UsageError(f"UniVL's loader keys by the file name cut at its dot and skips names with more than one: "
                         f"rename {', '.join(v + '.npy' for v in dotted[:5])}" + (" ..." if len(dotted) > 5 else ""))
    feats = {v: _load(feature_dir, v) for v in ids}
    _write(out_file, pickle.dumps(feats, protocol=pickle.HIGHEST_PROTOCOL))
    return len(feats)


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def pack_videoclip(feature_dir: str, out_dir: str, *, ids: Sequence[str] | None = None, split: str = "train",
                   shard_size: int = 4096) -> int:
    """MMPT shards of ``ids`` (default: every ``DIR/*.npy``, in name order); returns the count."""
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise UsageError(f"shard size must be a whole number >= 1, got {shard_size!r}")
    if not split or os.sep in split:
        raise UsageError(f"split must be a plain name, got {split!r}")
    ids = list(ids) if ids is not None else _ids(feature_dir)
    if not ids:
        raise UsageError("no video ids to pack")
    missing = [v for v in ids if not os.path.isfile(os.path.join(feature_dir, v + ".npy"))]
    if missing:
        raise UsageError(f"{len(missing)} listed video(s) have no feature file in {feature_dir}: "
                         f"{', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else ""))
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create {out_dir}: {exc.strerror or exc}") from exc
    meta: dict[int, list[str]] = {}
    for i, off in enumerate(range(0, len(ids), shard_size)):
        part = ids[off: off + shard_size]
        arrays = [_load(feature_dir, v) for v in part]
        starts = np.zeros(len(arrays) + 1, np.int64)
        starts[1:] = np.cumsum([a.shape[0] for a in arrays])
        base = os.path.join(out_dir, f"{split}_{i}")
        _write(base + "_starts.npy", _npy(starts))
        _write(base + "_data.npy", _npy(np.concatenate(arrays, axis=0)))
        meta[i] = part
    _write(os.path.join(out_dir, f"{split}_meta.pkl"), pickle.dumps(meta, protocol=pickle.HIGHEST_PROTOCOL))
    return len(ids)
