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

The pickles load with a plain ``pickle.load`` under Python 3.4+ and numpy 1.x or 2.x: protocol
``PICKLE_PROTOCOL`` (4), and every array is reduced as ``numpy.ndarray((0,), dtype)`` plus
``ndarray.__setstate__((1, shape, dtype, False, raw bytes))`` with its dtype as
``numpy.dtype('<f2', False, True)``: the only globals named are ``numpy.ndarray`` and
``numpy.dtype`` (numpy 2's own pickles name ``numpy._core``, absent from numpy 1.x). The
UniVL pickle is streamed (one video in memory at a time, written in protocol-4 frames).

Inputs are checked before they are packed: every ``.npy`` is read through ``milnce.video.npyfile.read_npy``
(header against file size), must be 2-D rows of the consumer's width (``Recipe.dim``), finite,
and, in a folder written by ``milnce extract --recipe`` (``milnce-recipe.json``), of that
consumer's recipe, with a sidecar that agrees (rows, SHA-256).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import pickle
import re
from collections.abc import Sequence
from typing import Any, BinaryIO

import numpy as np

from ..atomic import atomic_file, atomic_write_bytes
from ..errors import MilnceError, UsageError
from ..listfiles import read_lines
from ..printable import show_path
from ..recipes import Recipe, get_recipe
from ..video import read_npy
from .recipe_store import FORMAT, MANIFEST_DIR, RECIPE_FILE, read_sidecar
from .store import StoreError

__all__ = ["pack_univl", "pack_videoclip", "read_id_list", "PICKLE_PROTOCOL", "MAX_IDS", "MAX_ID_LINE"]

log = logging.getLogger("milnce.extract")

PICKLE_PROTOCOL = 4  # Python >= 3.4 reads it; framed, so the pickler streams to the file
MAX_IDS = 10_000_000  # video ids in one --ids list (HowTo100M has 1.2 million)
MAX_ID_LINE = 1024  # characters: a longer "line" is not a video id (/dev/zero, a binary file)


def _short(names: Sequence[str]) -> str:
    return ", ".join(repr(n) for n in names[:5]) + (" ..." if len(names) > 5 else "")


def read_id_list(name: str) -> list[str]:
    """The video ids of a list file, one a line, in order (blank lines and ``#`` lines skipped).
    Bounded (``milnce.listfiles``): refuses devices and folders, lines over ``MAX_ID_LINE``
    characters, NUL bytes, text that is not UTF-8 and more than ``MAX_IDS`` ids, each in one line
    (``UsageError``)."""
    return read_lines(name, f"--ids {show_path(name)}", what="not a list of video ids, one a line", max_line=MAX_ID_LINE,
                      max_entries=MAX_IDS, fifo=True, encoding="utf-8")


def _check_ids(ids: Sequence[str]) -> None:
    bad = [v for v in ids if not v or v.startswith(".") or "/" in v or os.sep in v or "\0" in v]
    if bad:
        raise UsageError(f"not video ids (a file name without its .npy, no folder, not hidden): {_short(bad)}")
    seen: dict[str, int] = {}
    for v in ids:
        seen[v] = seen.get(v, 0) + 1
    twice = [v for v, k in seen.items() if k > 1]
    if twice:
        raise UsageError("video id(s) listed more than once (each video is packed once): "
                         + ", ".join(f"{v!r} ({seen[v]} times)" for v in twice[:5]) + (" ..." if len(twice) > 5 else ""))


class _Source:
    """The feature folder of one consumer: its recipe, and whether milnce wrote it (sidecars)."""

    def __init__(self, feature_dir: str, consumer: str) -> None:
        if not os.path.isdir(feature_dir):
            raise UsageError(f"{feature_dir}: no such folder")
        self.dir, self.consumer = feature_dir, consumer
        self.recipe: Recipe = get_recipe(consumer)
        manifest = os.path.join(feature_dir, RECIPE_FILE)
        self.managed = os.path.lexists(manifest)
        if not self.managed:
            log.warning("%s: no %s (not written by milnce extract --recipe): each .npy is checked for its shape "
                        "and values only", feature_dir, RECIPE_FILE)
            return
        try:
            doc = read_sidecar(manifest)
            name = doc["recipe"]["name"] if doc.get("format") == FORMAT else None
        except (OSError, ValueError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
            name = None
        if name is None:
            raise UsageError(f"{manifest}: not a milnce recipe manifest (damaged?)")
        if name != consumer:
            raise UsageError(f"{feature_dir} holds features of --recipe {name}; pack {consumer} takes those of "
                             f"--recipe {consumer}")

    def ids(self) -> list[str]:
        names = sorted(n for n in os.listdir(self.dir) if n.endswith(".npy") and not n.startswith("."))
        if not names:
            raise UsageError(f"{self.dir}: no .npy feature files (write them with milnce extract --recipe)")
        return [n[:-4] for n in names]

    def load(self, vid: str) -> np.ndarray:
        """One video's rows, checked (shape, width, dtype, finite, sidecar)."""
        p = os.path.join(self.dir, vid + ".npy")
        arr, _head, digest = read_npy(p)
        r = self.recipe
        if arr.ndim != 2 or arr.shape[1] != r.dim:
            raise UsageError(f"{p}: shape {arr.shape}, but {self.consumer} takes rows of {r.dim} values "
                             f"(the {r.feature} features of --recipe {r.name})")
        if arr.shape[0] == 0:
            raise UsageError(f"{p}: no rows")
        if arr.dtype.kind != "f" or (self.managed and arr.dtype != np.dtype(r.dtype)):
            raise UsageError(f"{p}: {arr.dtype} values, expected {r.dtype}")
        if not np.isfinite(arr).all():
            raise UsageError(f"{p}: holds NaN or infinite values (damaged; extract it again)")
        if self.managed:
            side = os.path.join(self.dir, MANIFEST_DIR, vid + ".json")
            try:
                meta = read_sidecar(side)
            except FileNotFoundError:
                raise UsageError(f"{p}: no sidecar {side} (its extraction did not finish: run milnce extract "
                                 f"--recipe {r.name} again)") from None
            except (OSError, ValueError, UnicodeDecodeError) as exc:
                raise UsageError(f"{side}: unreadable sidecar ({' '.join(str(exc).split())[:160]})") from None
            if not isinstance(meta, dict) or meta.get("rows") != arr.shape[0] or \
                    meta.get("npy_sha256", digest) != digest:
                raise UsageError(f"{p}: does not match its sidecar {side} (changed after it was written; "
                                 f"milnce extract --check ... --recipe {r.name} --verify-files finds and redoes it)")
        return np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))


def _refuse_existing(path: str, overwrite: bool) -> None:
    if os.path.isdir(path):
        raise UsageError(f"{path} is a folder; pack univl writes one file")
    if os.path.lexists(path) and not overwrite:
        raise UsageError(f"{path} exists; pass --overwrite to replace it")


class _Pending:
    """A dict value packed when the pickler reaches it: one video in memory at a time."""

    __slots__ = ("vid",)

    def __init__(self, vid: str) -> None:
        self.vid = vid


class _ConsumerPickler(pickle.Pickler):
    """Arrays and dtypes reduced through ``numpy.ndarray`` / ``numpy.dtype`` only (module doc);
    no memo (``fast``): nothing packed stays referenced once written."""

    def __init__(self, f: BinaryIO, load: Any = None) -> None:
        super().__init__(f, protocol=PICKLE_PROTOCOL)
        self.fast = True
        self._load = load

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, _Pending):
            obj = self._load(obj.vid)
        if type(obj) is np.ndarray:
            a = np.ascontiguousarray(obj)
            return np.ndarray, ((0,), a.dtype), (1, a.shape, a.dtype, False, a.tobytes())
        if isinstance(obj, np.dtype):
            if obj.fields is not None or obj.subdtype is not None or obj.kind not in "biuf":
                raise UsageError(f"cannot pack {obj} arrays")
            return np.dtype, (obj.str, False, True)
        return NotImplemented


def consumer_pickle(obj: Any) -> bytes:
    """``obj`` (dicts, lists, str, int, numeric arrays) pickled as ``pack`` writes it (module doc)."""
    buf = io.BytesIO()
    _ConsumerPickler(buf).dump(obj)
    return buf.getvalue()


def _write(path: str, data: bytes) -> None:
    try:
        atomic_write_bytes(path, data)
    except MilnceError:
        raise
    except OSError as exc:
        raise StoreError(f"cannot write {path}: {exc.strerror or exc}") from exc


def pack_univl(feature_dir: str, out_file: str, *, overwrite: bool = False) -> int:
    """The UniVL pickle of every ``DIR/<video_id>.npy``; returns the number of videos.
    ``OUT`` is written atomically and refused when it exists (``overwrite``: replaced)."""
    src = _Source(feature_dir, "univl")
    ids = src.ids()
    dotted = [v for v in ids if "." in v]
    if dotted:
        raise UsageError(f"UniVL's loader keys by the file name cut at its dot and skips names with more than one: "
                         f"rename {', '.join(v + '.npy' for v in dotted[:5])}" + (" ..." if len(dotted) > 5 else ""))
    _refuse_existing(out_file, overwrite)
    pending = {v: _Pending(v) for v in ids}
    with atomic_file(out_file) as f:
        _ConsumerPickler(f, src.load).dump(pending)
    return len(ids)


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def _shard_files(out_dir: str, split: str) -> list[str]:
    pat = re.compile(re.escape(split) + r"_(meta\.pkl|\d+_(data|starts)\.npy)")
    try:
        return sorted(n for n in os.listdir(out_dir) if pat.fullmatch(n))
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise StoreError(f"cannot read {out_dir}: {exc.strerror or exc}") from exc


def _write_shards(src: _Source, ids: Sequence[str], out_dir: str, split: str, shard_size: int,
                  written: set[str]) -> None:
    """The shards, then ``{split}_meta.pkl``; each file's name is added to ``written`` once written."""
    meta: dict[int, list[str]] = {}
    for i, off in enumerate(range(0, len(ids), shard_size)):
        part = list(ids[off: off + shard_size])
        arrays = [src.load(v) for v in part]
        starts = np.zeros(len(arrays) + 1, np.int64)
        starts[1:] = np.cumsum([a.shape[0] for a in arrays])
        for suffix, a in (("_starts.npy", starts), ("_data.npy", np.concatenate(arrays, axis=0))):
            name = f"{split}_{i}{suffix}"
            _write(os.path.join(out_dir, name), _npy(a))
            written.add(name)
        meta[i] = part
    _write(os.path.join(out_dir, f"{split}_meta.pkl"), consumer_pickle(meta))
    written.add(f"{split}_meta.pkl")


def pack_videoclip(feature_dir: str, out_dir: str, *, ids: Sequence[str] | None = None, split: str = "train",
                   shard_size: int = 4096, overwrite: bool = False) -> int:
    """MMPT shards of ``ids`` (default: every ``DIR/*.npy``, in name order); returns the count.
    Refused when ``out_dir`` already holds files of ``split`` (``overwrite``: they are removed
    first). An input refused half-way leaves none of the split's files behind."""
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise UsageError(f"shard size must be a whole number >= 1, got {shard_size!r}")
    if not split or os.sep in split or "/" in split or split.startswith("."):
        raise UsageError(f"split must be a plain name, got {split!r}")
    src = _Source(feature_dir, "videoclip")
    ids = list(ids) if ids is not None else src.ids()
    if not ids:
        raise UsageError("no video ids to pack")
    _check_ids(ids)
    missing = [v for v in ids if not os.path.isfile(os.path.join(feature_dir, v + ".npy"))]
    if missing:
        raise UsageError(f"{len(missing)} listed video(s) have no feature file in {feature_dir}: "
                         f"{', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else ""))
    if os.path.isdir(out_dir) and os.path.samefile(out_dir, feature_dir):
        raise UsageError(f"{out_dir}: the shards go to another folder than the features")
    old = _shard_files(out_dir, split)
    if old and not overwrite:
        raise UsageError(f"{out_dir} already holds {len(old)} file(s) of split {split!r} ({_short(old)}); "
                         "pass --overwrite to replace them")
    for name in old:  # --overwrite: the old split goes first (a half-replaced split would mix two packs)
        try:
            os.unlink(os.path.join(out_dir, name))
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StoreError(f"cannot remove {os.path.join(out_dir, name)}: {exc.strerror or exc}") from exc
    created = not os.path.isdir(out_dir)
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create {out_dir}: {exc.strerror or exc}") from exc
    written: set[str] = set()
    try:
        _write_shards(src, ids, out_dir, split, shard_size, written)
    except BaseException:  # a refused input half-way: nothing of this split is left behind
        for name in written:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(out_dir, name))
        if created:
            with contextlib.suppress(OSError):
                os.rmdir(out_dir)
        raise
    return len(ids)
