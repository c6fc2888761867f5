"""UCF-101 (Soomro et al., 2012): the official three train/test splits, for the ``mixed_5c`` linear probe.

The split files are those of ``UCF101TrainTestSplits-RecognitionTask.zip`` (folder
``ucfTrainTestlist/``), read as distributed (CRLF line ends are fine):

- ``classInd.txt``: ``<index> <ClassName>`` (1-based, 101 lines);
- ``trainlist0N.txt``: ``<ClassName>/<file>.avi <index>``;
- ``testlist0N.txt``: ``<ClassName>/<file>.avi``.

The class of a video is the folder part of its line (checked against ``classInd.txt``; a case
difference is accepted, since the release itself mixes ``HandstandPushups`` and
``HandStandPushups``); a train line's index must agree with it. Every video is a row with one
flag per split (1 train, 2 test, 0 absent), as the HMDB-51 file has. The probe is HMDB-51's
(``milnce.eval.linear_probe``); its validation hold-out is drawn by *group*: the ``gNN`` of
``v_<Class>_gNN_cMM.avi``, the 25 groups the official splits are made of (clips of one group
share actors and scenes; the splits never put a group on both sides).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import MissingFileError, UsageError
from ..listfiles import MAX_CSV_ROW, bounded_lines, open_list
from ..printable import show_path
from .items import Benchmark, EvalItem, is_whole, quoted, round_robin

__all__ = ["SPLIT_FILES", "load_ucf101", "ucf_group"]

SPLIT_FILES = ("classInd.txt",) + tuple(f"{kind}list0{k}.txt" for k in (1, 2, 3) for kind in ("train", "test"))
_PLAIN = re.compile(r"[A-Za-z0-9_.\-]+")  # class names become folder names: never a path
_GROUP = re.compile(r"_g(\d+)_c\d+", re.IGNORECASE)


def ucf_group(video_id: str) -> str:
    """The group of a UCF-101 clip: ``gNN`` of ``v_<Class>_gNN_cMM.avi`` (else the file stem)."""
    m = _GROUP.search(os.path.basename(video_id))
    return f"g{int(m.group(1)):02d}" if m else os.path.splitext(os.path.basename(video_id))[0]


def _folder(path: str | os.PathLike[str] | None) -> Path:
    if path is None:
        raise UsageError("ucf101 needs --annotations: the ucfTrainTestlist/ folder of the official splits "
                         "(UCF101TrainTestSplits-RecognitionTask.zip)")
    p = Path(path)
    if not p.exists():
        raise MissingFileError(f"UCF-101 split folder not found: {p}")
    if not p.is_dir():
        raise UsageError(f"--annotations must be the ucfTrainTestlist/ folder, got a file: {p}")
    for cand in (p, p / "ucfTrainTestlist"):
        if (cand / "classInd.txt").is_file():
            return cand
    raise UsageError(f"{p}: not the UCF-101 split folder (no classInd.txt)")


def _read(path: Path) -> list[str]:
    if not path.is_file():
        raise MissingFileError(f"UCF-101 split file not found: {path}")
    try:
        return [line.rstrip("\r\n") for line in _bounded(path)]
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: not a UTF-8 text file ({exc.reason})") from None


def _classes(path: Path) -> dict[int, str]:
    out: dict[int, str] = {}
    for n, line in enumerate(_read(path), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise UsageError(f"{path}, line {n}: expected '<index> <ClassName>', got {len(parts)} fields")
        if not is_whole(parts[0]):
            raise UsageError(f"{path}, line {n}: expected '<index> <ClassName>': the class index "
                             f"{quoted(parts[0], path)} is not a whole number (ASCII digits)")
        if not _PLAIN.fullmatch(parts[1]) or parts[1] in (".", ".."):
            raise UsageError(f"{path}, line {n}: expected '<index> <ClassName>': the class name "
                             f"{quoted(parts[1], path)} is not a plain name (letters, digits, _.-)")
        if int(parts[0]) in out or parts[1] in out.values():
            raise UsageError(f"{path}, line {n}: class {int(parts[0])} {quoted(parts[1], path)} appears twice")
        out[int(parts[0])] = parts[1]
    if len(out) < 2:
        raise UsageError(f"{path}: fewer than 2 classes")
    return out


def _split(path: Path, train: bool, by_name: dict[str, str], classes: dict[int, str]) -> list[tuple[str, str, str]]:
    """``(video file name, class folder, class)`` of each line."""
    rows = []
    for n, line in enumerate(_read(path), 1):
        if not line.strip():
            continue
        where = f"{path}, line {n}"
        parts = line.split()
        if len(parts) not in ((2,) if train else (1, 2)):
            raise UsageError(f"{where}: expected '<Class>/<file>.avi{' <index>' if train else ''}', "
                             f"got {len(parts)} fields")
        rel = parts[0].replace("\\", "/")
        if "/" not in rel:
            raise UsageError(f"{where}: expected '<Class>/<file>', got {quoted(rel, path)}")
        folder, name = rel.rsplit("/", 1)
        cls = by_name.get(folder.lower())
        if cls is None:
            raise UsageError(f"{where}: class {quoted(folder, path)} is not in classInd.txt")
        if len(parts) == 2:
            if not is_whole(parts[1]) or classes.get(int(parts[1])) != cls:
                raise UsageError(f"{where}: index {quoted(parts[1], path)} does not name class {cls} in classInd.txt "
                                 "(ASCII digits)")
        rows.append((name, folder, cls))
    return rows


def load_ucf101(annotations: str | os.PathLike[str] | None, limit: int | None = None) -> Benchmark:
    """The three official splits as a ``Benchmark`` of ``EvalItem`` rows (one per video)."""
    root = _folder(annotations)
    classes = _classes(root / "classInd.txt")
    by_name = {c.lower(): c for c in classes.values()}
    flags: dict[str, list[int]] = {}
    info: dict[str, tuple[str, str]] = {}
    for k in (1, 2, 3):
        for train in (True, False):
            path = root / f"{'train' if train else 'test'}list0{k}.txt"
            for name, folder, cls in _split(path, train, by_name, classes):
                if name in info and info[name][1] != cls:
                    raise UsageError(f"{path}: {name} is class {cls} here but {info[name][1]} in another file")
                f = flags.setdefault(name, [0, 0, 0])
                if f[k - 1] not in (0, 1 if train else 2):
                    raise UsageError(f"{path}: {name} is both a training and a test video of split {k}")
                f[k - 1] = 1 if train else 2
                info.setdefault(name, (folder, cls))
    if not flags:
        raise UsageError(f"{root}: the split files list no video")
    order = {c: i for i, c in sorted(classes.items())}
    names = sorted(flags, key=lambda n: (order[info[n][1]], n))  # by class index, then file name
    items = [EvalItem(i, name, None, None, label=info[name][1], folder=info[name][0], splits=tuple(flags[name]))
             for i, name in enumerate(names)]
    bench = Benchmark("ucf101", items, str(root), total_rows=len(items))
    if limit is not None:
        if isinstance(limit, bool) or int(limit) < 1:
            raise UsageError(f"limit must be a whole number >= 1, got {limit!r}")
        if int(limit) < len(items):
            bench.items = round_robin(items, int(limit))
            bench.limited = True
    return bench


def _bounded(path: Path) -> list[str]:
    with open_list(path, show_path(str(path))) as f:
        return list(bounded_lines(f, show_path(str(path)), max_line=MAX_CSV_ROW, what="not a release text file"))
