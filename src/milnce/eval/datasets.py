"""The three benchmarks: their annotation files, rows and where their videos live on disk.

Annotation files (shipped in ``milnce/eval/data/``, copied from the public MIL-NCE repository):

- ``youcook2_validation.csv``: ``end,start,task,text,video_id`` (seconds); 3,350 clips of 436
  videos. Videos at ``ROOT/validation/<task>/<video_id>.{mp4,mkv,webm}``.
- ``msrvtt_1k_test.csv``: ``key,vid_key,video_id,sentence``; 1,000 whole videos at
  ``ROOT/<video_id>.mp4``.
- ``hmdb51_splits.csv``: ``video_id,label,split1,split2,split3`` (1 = train, 2 = test, 0 = unused);
  the label is the name of HMDB's split files (``brush_hair_test``), the class and folder name
  is the label without ``_test``. Videos at ``ROOT/<class>/<video_id>``.

Every layout also accepts a flat folder (``ROOT/<video_id>.<ext>``), and as a last resort a
file anywhere under ``ROOT`` with the expected name (or stem, for re-encoded copies).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from importlib import resources
from pathlib import Path

from ..errors import MissingFileError, UsageError
from ..listfiles import open_list, read_csv_rows
from ..printable import show_path
from ..video import VIDEO_SUFFIXES, walk_videos
from .items import Benchmark, EvalItem, parse_seconds, quoted, round_robin

__all__ = [
    "BENCHMARKS",
    "Benchmark",
    "EvalItem",
    "VideoResolver",
    "class_name",
    "default_annotations",
    "load_benchmark",
]

BENCHMARKS = ("youcook2", "msrvtt", "hmdb51", "ucf101")  # CrossTask: milnce.eval.crosstask
_FILES = {
    "youcook2": "youcook2_validation.csv",
    "msrvtt": "msrvtt_1k_test.csv",
    "hmdb51": "hmdb51_splits.csv",
}
_COLUMNS = {
    "youcook2": ("end", "start", "task", "text", "video_id"),
    "msrvtt": ("video_id", "sentence"),
    "hmdb51": ("video_id", "label", "split1", "split2", "split3"),
}


def default_annotations(name: str) -> Path:
    """The annotation file shipped with the package for benchmark ``name``."""
    _check_name(name)
    return Path(str(resources.files("milnce.eval") / "data" / _FILES[name]))


def _check_name(name: str) -> None:
    if name not in BENCHMARKS:
        raise UsageError(f"unknown benchmark {name!r}; choose one of {', '.join(BENCHMARKS)}")


def class_name(label: str) -> str:
    """HMDB class from the csv label: ``brush_hair_test`` -> ``brush_hair``."""
    return label.removesuffix("_test")


def _split_flag(value: str, where: str) -> int:
    v = str(value).strip()
    if v not in ("0", "1", "2"):
        raise UsageError(f"{where}: split values must be 0 (unused), 1 (train) or 2 (test), got {value!r}")
    return int(v)


def load_benchmark(name: str, annotations: str | os.PathLike[str] | None = None, limit: int | None = None) -> Benchmark:
    """Read a benchmark's annotation file (default: the shipped one) into ``EvalItem`` rows.

    ``limit``: keep the first ``limit`` rows (HMDB-51: ``limit`` rows taken round-robin over the
    classes, so that a quick trial still has every class it can)."""
    _check_name(name)
    if name == "ucf101":  # a folder of the official split files, not shipped
        from .ucf101 import load_ucf101

        return load_ucf101(annotations, limit)
    path = Path(annotations) if annotations is not None else default_annotations(name)
    if not path.exists():
        raise MissingFileError(f"annotation file not found: {path}")
    if path.is_dir():
        raise UsageError(f"annotation path is a folder, not a .csv file: {path}")
    try:
        with open_list(path, show_path(str(path))) as f:  # utf-8-sig: a BOM is dropped; bounded reads
            reader = read_csv_rows(f, show_path(str(path)), what=f"not a {name} annotation file")
            header = [h.strip() for h in (next(reader, None) or [])]
            missing = [c for c in _COLUMNS[name] if c not in header]
            if missing:
                raise UsageError(
                    f"{path}: not a {name} annotation file: missing column(s) {', '.join(missing)} "
                    f"(expected {','.join(_COLUMNS[name])}; found {quoted(','.join(header), path, 80) if header else 'no header'})"
                )
            rows = [{k: (r[i] if i < len(r) else "").strip() for i, k in enumerate(header)} for r in reader if r]
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: not a UTF-8 text file ({exc.reason})") from None
    if not rows:
        raise UsageError(f"{path}: no rows")
    items = [_item(name, i, r, f"{path}, row {i + 2}") for i, r in enumerate(rows)]
    bench = Benchmark(name, items, str(path), total_rows=len(items))
    if limit is not None:
        if isinstance(limit, bool) or int(limit) < 1:
            raise UsageError(f"limit must be a whole number >= 1, got {limit!r}")
        limit = int(limit)
        if limit < len(items):
            bench.items = round_robin(items, limit) if name == "hmdb51" else items[:limit]
            bench.limited = True
    return bench


def _item(name: str, i: int, r: dict[str, str], where: str) -> EvalItem:
    vid = r["video_id"]
    if not vid:
        raise UsageError(f"{where}: empty video_id")
    if name == "youcook2":
        start, end = parse_seconds(r["start"], "start", where), parse_seconds(r["end"], "end", where)
        if end < start:
            raise UsageError(f"{where}: end ({end:g}) is before start ({start:g})")
        return EvalItem(i, vid, start, end, text=r["text"], folder=r["task"] or None)
    if name == "msrvtt":
        return EvalItem(i, vid, None, None, text=r["sentence"])
    label = r["label"]
    if not label:
        raise UsageError(f"{where}: empty label")
    splits = tuple(_split_flag(r[f"split{k}"], where) for k in (1, 2, 3))
    return EvalItem(i, vid, None, None, label=class_name(label), folder=label, splits=splits)


class VideoResolver:
    """Finds each row's video file under ``root`` following the benchmark's layout.

    Tried in order: the protocol's folder (``validation/<task>/``, ``<class>/``, and the csv
    label ``<class>_test/`` for HMDB), the same folders without ``validation/``, then ``root``
    itself, each with the csv's file name (HMDB) or ``<video_id>`` + a known extension; last, a
    file anywhere under ``root`` with that name or stem (the folder is walked once, lazily).
    """

    def __init__(self, root: str | os.PathLike[str], benchmark: str) -> None:
        self.root = Path(root)
        if not self.root.exists():
            raise MissingFileError(f"video folder not found: {self.root}")
        if not self.root.is_dir():
            raise UsageError(f"--videos must be a folder, got a file: {self.root}")
        self.benchmark = benchmark
        self._by_name: dict[str, Path] | None = None
        self._by_stem: dict[str, Path] | None = None

    def _folders(self, item: EvalItem) -> list[Path]:
        r = self.root
        if self.benchmark == "youcook2" and item.folder:
            return [r / "validation" / item.folder, r / item.folder, r / "validation", r]
        if self.benchmark in ("hmdb51", "ucf101") and item.folder:
            return [r / class_name(item.folder), r / item.folder, r]
        return [r, r / "videos" / "all", r / "videos"]

    def _names(self, item: EvalItem) -> list[str]:
        vid = item.video_id
        if os.path.splitext(vid)[1].lower() in VIDEO_SUFFIXES:
            stem = os.path.splitext(vid)[0]
            return [vid] + [stem + e for e in VIDEO_SUFFIXES if stem + e != vid]
        return [vid + e for e in VIDEO_SUFFIXES]

    def _walk(self) -> None:
        by_name: dict[str, Path] = {}
        by_stem: dict[str, Path] = {}
        for found in walk_videos(self.root):  # the one walker: links inside root, no loops
            fn = os.path.basename(found)
            p = Path(found)
            by_name.setdefault(fn, p)
            by_stem.setdefault(os.path.splitext(fn)[0], p)
        self._by_name, self._by_stem = by_name, by_stem

    def resolve(self, item: EvalItem) -> Path | None:
        """The video file of ``item``, or None when it is not under ``root``."""
        names = self._names(item)
        for folder in self._folders(item):
            for n in names:
                p = folder / n
                if p.is_file():
                    return p
        if self._by_name is None:
            self._walk()
        assert self._by_name is not None and self._by_stem is not None
        for n in names:
            if n in self._by_name:
                return self._by_name[n]
        return self._by_stem.get(os.path.splitext(item.video_id)[0] if os.path.splitext(item.video_id)[1].lower()
                                 in VIDEO_SUFFIXES else item.video_id)

    def resolve_all(self, items: Iterable[EvalItem]) -> dict[int, Path | None]:
        """Row -> path (or None) for every item; one lookup per distinct video."""
        seen: dict[tuple[str, str | None], Path | None] = {}
        out: dict[int, Path | None] = {}
        for it in items:
            key = (it.video_id, it.folder)
            if key not in seen:
                seen[key] = self.resolve(it)
            out[it.row] = seen[key]
        return out
