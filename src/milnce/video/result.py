"""One video's windows (``VideoWindows``) and its one ``.npz`` format, read without pickle.

Arrays: ``video_embedding`` (n x D float32, D = the model's embedding size), ``mixed_5c`` (n x F
float32, when kept), ``start``/``end`` (n float64 seconds), ``duration`` (float64 seconds, nan if
unknown), ``path`` (the video, str) and ``meta`` (a JSON str: ``format``, the window settings and,
from ``milnce extract``, features, weights fingerprint, precision and the source's size and mtime).
Older files still read: ``embed-video`` files before this format (``embeddings``/``starts``/
``ends``/``features`` + ``fps``/``num_frames``/``size``/``stride``) and plain ``N x D`` ``.npy``.

``check_structure`` is the cheap check of a finished file (zip directory, every member's size
against its array header, row counts); ``check_crc`` reads every member (CRC-32).
"""

from __future__ import annotations

import json
import math
import os
import warnings
import zipfile
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np

from ..atomic import atomic_file
from ..errors import MilnceError, UsageError
from ..windows import WindowSettings
from .npyfile import NpyFileError, npy_header, read_header_fields

__all__ = ["VideoWindows", "failure_reason", "EmbeddingsFileError", "FORMAT", "write_npz", "check_structure", "check_crc", "meta_problem",
           "MAX_DURATION_S"]

FORMAT = "milnce-features/1"
MAX_DURATION_S = 366 * 86400.0  # a video longer than a year is a crafted number, not a recording
_ARRAYS = ("video_embedding", "start", "end", "meta")  # what a current file always holds


def failure_reason(message: str, path: str) -> str:
    """A failed video's reason as the failure lists show it (``index``, ``extract``, ``eval``): one
    line, without the path (the list shows it once): a leading ``PATH: `` (the path as given,
    absolute, with its whitespace collapsed, or its base name) and later mentions are removed."""
    msg = " ".join(str(message).split())
    full = [path, os.path.abspath(path)]
    names = list(dict.fromkeys([*full, *(" ".join(p.split()) for p in full), os.path.basename(path)]))
    for p in names:
        for sep in (": ", " "):
            if p and msg.startswith(p + sep):
                msg = msg[len(p) + len(sep):]
                break
    for p in names[:-1]:
        if p:
            msg = msg.replace(f" {p}", "")
    return msg.strip() or "unreadable"


def _deprecated(old: str, new: str) -> None:
    warnings.warn(f"VideoWindows.{old} is deprecated: use VideoWindows.{new}", DeprecationWarning, stacklevel=3)


class EmbeddingsFileError(MilnceError, ValueError):
    """A saved embeddings file (``.npz``/``.npy``) that is missing, damaged or not in the expected format."""


@dataclass
class VideoWindows:
    """The windows of one video: the pipeline's result, ``encode_video_file``'s and a file's contents.

    ``starts``/``ends``: float64 seconds (n); ``embeddings``: float32 ``n x D``; ``features``:
    float32 ``n x F`` (mixed_5c) or None; ``duration``: seconds (nan if unknown); ``key``: the
    job's id (pipeline); ``error``: why the video could not be read (the arrays then empty);
    ``warnings``: corrupt or truncated data that was skipped; ``meta``: the file's meta dict;
    ``stats``: timings; ``settings``: the windows; ``file``: the ``.npz`` it was read from.
    The older attribute names ``video_embedding``, ``mixed_5c``, ``video_path``, ``start`` and
    ``end`` still work, with a ``DeprecationWarning``."""

    path: str
    starts: np.ndarray
    ends: np.ndarray
    embeddings: np.ndarray
    features: np.ndarray | None = None
    duration: float = math.nan
    key: Hashable = None
    error: str | None = None
    warnings: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, float] = field(default_factory=dict)
    settings: WindowSettings | None = None
    file: str | None = None
    exception: BaseException | None = field(default=None, repr=False)  # the decoder's, in-process only

    def __len__(self) -> int:
        return int(self.starts.shape[0])

    @property
    def video_embedding(self) -> np.ndarray:
        """Deprecated: ``embeddings``."""
        _deprecated("video_embedding", "embeddings")
        return self.embeddings

    @property
    def mixed_5c(self) -> np.ndarray | None:
        """Deprecated: ``features``."""
        _deprecated("mixed_5c", "features")
        return self.features

    @property
    def video_path(self) -> str:
        """Deprecated: ``path``."""
        _deprecated("video_path", "path")
        return self.path

    @property
    def start(self) -> np.ndarray:
        """Deprecated: ``starts``."""
        _deprecated("start", "starts")
        return self.starts

    @property
    def end(self) -> np.ndarray:
        """Deprecated: ``ends``."""
        _deprecated("end", "ends")
        return self.ends

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The arrays of the ``.npz`` format (``meta`` apart)."""
        out: dict[str, np.ndarray] = {"video_embedding": np.ascontiguousarray(self.embeddings, dtype=np.float32),
               "start": np.asarray(self.starts, dtype=np.float64), "end": np.asarray(self.ends, dtype=np.float64),
               "duration": np.asarray(self.duration, dtype=np.float64), "path": np.asarray(str(self.path), np.str_)}
        if self.features is not None:
            out["mixed_5c"] = np.ascontiguousarray(self.features, dtype=np.float32)
        return out

    def to_npz_dict(self) -> dict[str, np.ndarray]:
        """``to_arrays()`` with ``meta`` (what ``save`` writes)."""
        out = self.to_arrays()
        out["meta"] = _meta_array(self._meta())
        return out

    def _meta(self) -> dict[str, Any]:
        meta = {"format": FORMAT, "windows": len(self), "warnings": list(self.warnings), **self.meta}
        if self.settings is not None and "settings" not in meta:
            meta["settings"] = self.settings.to_dict()
        meta.setdefault("duration", self.duration if math.isfinite(self.duration) else None)
        return meta

    def save(self, target: str | os.PathLike[str]) -> None:
        """Write the ``.npz`` atomically (temporary file in the same folder, fsync, rename)."""
        with atomic_file(target) as f:
            write_npz(f, self.to_arrays(), self._meta())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> VideoWindows:
        """Read a ``.npz`` of this format or an older one, or an ``N x D`` ``.npy`` (window times
        NaN). Pickle-free; ``EmbeddingsFileError`` (one line naming the file) for anything else."""
        p = os.fspath(path)
        if not os.path.exists(p):
            raise EmbeddingsFileError(f"video embeddings not found: {p}")
        try:
            if not zipfile.is_zipfile(p):  # a plain .npy: its header checked against the file size first
                npy_header(p)
            data = np.load(p, allow_pickle=False)
        except NpyFileError as exc:  # a shape the file cannot hold: refused before np.load allocates it
            raise EmbeddingsFileError(str(exc)) from exc
        except Exception as exc:  # noqa: BLE001 - OSError, ValueError, BadZipFile...: not a readable file
            raise EmbeddingsFileError(f"{p}: not a readable .npy/.npz file ({_why(exc)})") from exc
        try:
            if isinstance(data, np.lib.npyio.NpzFile):
                with data:
                    out = _from_npz(p, data)
            else:
                emb = data[None] if data.ndim == 1 else data
                nan = np.full(len(emb), np.nan)
                out = cls(path=p, starts=nan, ends=nan.copy(), embeddings=emb)
        except EmbeddingsFileError:
            raise
        except Exception as exc:  # noqa: BLE001 - a damaged member (CRC, truncation), odd dtypes
            raise EmbeddingsFileError(f"{p}: damaged or not an embeddings file ({_why(exc)})") from exc
        return _checked(p, out)


def _why(exc: BaseException) -> str:
    return " ".join((str(exc) or type(exc).__name__).split())


def _meta_array(meta: dict[str, Any]) -> np.ndarray:
    return np.asarray(json.dumps(meta, sort_keys=True), dtype=np.str_)


def write_npz(f: IO[bytes], arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """The one ``.npz`` writer: ``arrays`` and the JSON ``meta`` into the open binary file ``f``."""
    data: dict[str, Any] = dict(arrays)  # Any: savez's ``**kwds`` share a name space with its bool option
    data["meta"] = _meta_array(meta)
    np.savez(f, **data)


def _from_npz(p: str, data: Any) -> VideoWindows:
    files = set(data.files)
    key = next((k for k in ("video_embedding", "embeddings") if k in files), None)
    if key is None:
        raise EmbeddingsFileError(f"{p}: .npz without a 'video_embedding' array (keys: {', '.join(data.files)})")
    emb = data[key]
    n = len(emb) if emb.ndim else 0
    starts = next((data[k] for k in ("start", "starts") if k in files), np.arange(n, dtype=np.float64))
    ends = next((data[k] for k in ("end", "ends") if k in files), starts)
    features = next((data[k] for k in ("mixed_5c", "features") if k in files), None)
    meta: dict[str, Any] = {}
    if "meta" in files:
        loaded = json.loads(str(data["meta"]))
        why = meta_problem(loaded)
        if why is not None:
            raise EmbeddingsFileError(f"{p}: {why}")
        meta = loaded
    duration = float(data["duration"]) if "duration" in files else math.nan
    if "path" in files and (data["path"].dtype.kind != "U" or data["path"].ndim != 0):
        raise EmbeddingsFileError(f"{p}: its 'path' member is not one string (dtype {data['path'].dtype}, "
                                  f"shape {data['path'].shape})")
    source = str(data["path"]) if "path" in files else str(meta.get("source", {}).get("path", "") or p)
    settings = _settings(data, files, meta)
    return VideoWindows(path=source, starts=starts, ends=ends, embeddings=emb, features=features, duration=duration,
                        meta=meta, settings=settings, file=p, warnings=list(meta.get("warnings", []) or []))


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _is_strings(x: Any) -> bool:
    return isinstance(x, list) and all(isinstance(v, str) for v in x)


def meta_problem(meta: Any) -> str | None:
    """None if ``meta`` (a file's parsed JSON meta) has the types of this format wherever it has
    the keys (an object; ``settings`` an object; ``source`` an object with a string ``path`` and
    whole ``size``/``mtime_ns``; ``weights``/``precision``/``format`` strings; ``features``/
    ``warnings`` lists of strings; ``windows`` whole; ``duration`` a number or null), else what
    is wrong: a crafted meta fails here, as one line, not deep inside a reader."""
    if not isinstance(meta, dict):
        return f"its meta is not a JSON object (a {type(meta).__name__})"
    checks: list[tuple[str, Any, str]] = [
        ("settings", lambda v: isinstance(v, dict), "an object"),
        ("source", lambda v: isinstance(v, dict), "an object"),
        ("format", lambda v: isinstance(v, str), "a string"),
        ("weights", lambda v: isinstance(v, str), "a string"),
        ("precision", lambda v: isinstance(v, str), "a string"),
        ("features", _is_strings, "a list of strings"),
        ("warnings", _is_strings, "a list of strings"),
        ("windows", _is_int, "a whole number"),
        ("duration", lambda v: v is None or _is_number(v), "a number or null"),
    ]
    for key, ok, what in checks:
        if key in meta and not ok(meta[key]):
            return f"meta.{key} must be {what}, got {type(meta[key]).__name__} {_short(meta[key])}"
    if meta.get("duration") is not None and not 0 <= meta["duration"] <= MAX_DURATION_S:
        return f"meta.duration must be from 0 to {MAX_DURATION_S:g} seconds, got {_short(meta['duration'])}"
    if "windows" in meta and meta["windows"] < 0:
        return f"meta.windows must be >= 0, got {meta['windows']}"
    source = meta.get("source", {})
    for key, ok, what in (("path", lambda v: isinstance(v, str) and "\0" not in v, "a string without NUL"),
                          ("size", lambda v: _is_int(v) and 0 <= v < 1 << 63, "a whole number >= 0"),
                          ("mtime_ns", lambda v: _is_int(v) and -(1 << 63) <= v < 1 << 63, "a 64-bit whole number")):
        if key in source and not ok(source[key]):
            return f"meta.source.{key} must be {what}, got {type(source[key]).__name__} {_short(source[key])}"
    return None


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=True)
    return text if len(text) <= 40 else text[:37] + "..."


def _settings(data: Any, files: set[str], meta: dict[str, Any]) -> WindowSettings | None:
    try:
        if isinstance(meta.get("settings"), dict):
            return WindowSettings.from_dict(meta["settings"])
        if {"fps", "num_frames", "size", "stride"} <= files:
            return WindowSettings(fps=float(data["fps"]), num_frames=int(data["num_frames"]),
                                  size=int(data["size"]), stride=int(data["stride"]))
    except (UsageError, TypeError, ValueError):
        return None
    return None


def _checked(p: str, w: VideoWindows) -> VideoWindows:
    """Dtypes and shapes: numbers only (no object or string arrays), ``n x D`` embeddings with as many times."""
    for name, a in (("embeddings", w.embeddings), ("starts", w.starts), ("ends", w.ends), ("features", w.features)):
        if a is not None and (not isinstance(a, np.ndarray) or a.dtype.kind not in "fiu"):
            kind = getattr(getattr(a, "dtype", None), "kind", "?")
            raise EmbeddingsFileError(f"{p}: {name} is not a numeric array (dtype kind {kind!r})")
    if w.embeddings.ndim != 2:
        raise EmbeddingsFileError(f"{p}: expected an N x D array of embeddings, got shape {w.embeddings.shape}")
    n = w.embeddings.shape[0]
    if w.starts.shape != (n,) or w.ends.shape != (n,):
        raise EmbeddingsFileError(f"{p}: {n} embeddings but {w.starts.shape} start and {w.ends.shape} end times")
    if w.features is not None and (w.features.ndim != 2 or w.features.shape[0] != n):
        raise EmbeddingsFileError(f"{p}: features of shape {w.features.shape} for {n} windows")
    if not math.isnan(w.duration) and not 0 <= w.duration <= MAX_DURATION_S:
        raise EmbeddingsFileError(f"{p}: duration {w.duration:g} s is not from 0 to {MAX_DURATION_S:g} seconds")
    w.starts = np.asarray(w.starts, np.float64)
    w.ends = np.asarray(w.ends, np.float64)
    w.embeddings = w.embeddings.astype(np.float32, copy=False)
    return w


def check_structure(path: str, expected: tuple[str, ...] = _ARRAYS) -> str | None:
    """None if ``path`` is a whole ``.npz`` (zip directory readable, the ``expected`` members
    present, each member's size equal to what its array header says, one row count), else why
    not. Reads only the zip directory and the array headers: cheap enough for every rerun."""
    try:
        with zipfile.ZipFile(path) as z:
            infos = {i.filename[:-4]: i for i in z.infolist() if i.filename.endswith(".npy")}
            missing = [m for m in expected if m not in infos]
            if missing:
                return f"missing {', '.join(missing)}"
            size = os.path.getsize(path)
            rows = set()
            for name, info in infos.items():
                if info.header_offset + info.compress_size > size:
                    return f"member {name} runs past the end of the file"
                with z.open(info) as f:
                    shape, _fortran, dtype = read_header_fields(f)  # type: ignore[arg-type]
                    want = f.tell() + math.prod(shape) * dtype.itemsize
                if info.file_size != want:
                    return f"member {name} holds {info.file_size} bytes, its header says {want}"
                if name in ("video_embedding", "start", "end", "mixed_5c"):
                    rows.add(shape[0] if shape else -1)
            if len(rows) > 1:
                return f"members disagree on the number of windows ({sorted(rows)})"
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile) as exc:
        return f"damaged ({_why(exc)})"
    return None


def check_crc(path: str) -> str | None:
    """None if every member of the ``.npz`` reads back with its CRC-32, else why not."""
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        return f"damaged ({_why(exc)})"
    return None if bad is None else f"member {bad} fails its CRC check"
