"""Which videos an extraction covers, where each one's output goes, and which rank takes it.

Inputs (``collect_inputs``): video files, folders (searched recursively for video files), and
list files (``.txt``/``.lst``: one path per line; ``.csv``/``.tsv``: a ``video_path`` column),
whose relative paths are taken relative to the list file's folder. Each video gets a relative
output name that mirrors the input tree: the path below the folder given (a file given directly:
its name; a list: below the deepest folder holding all its entries), suffix replaced by ``.npz``.

Shards (``shard_inputs``): a deterministic, disjoint and complete split of the whole list into
``count`` shares balanced by file size (largest first onto the lightest share). Every rank
computes the same split from the same list, so ranks need no coordinator.
"""

from __future__ import annotations

import heapq
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from ..errors import UsageError
from ..listfiles import MAX_PATH_LINE, open_list, read_csv_rows, read_lines
from ..printable import show_path
from ..video import VIDEO_EXTENSIONS, walk_videos

__all__ = ["VideoInput", "Shard", "VIDEO_EXTENSIONS", "collect_inputs", "shard_inputs", "resolve_shard",
           "output_path"]

LIST_EXTENSIONS = frozenset({".txt", ".lst", ".list", ".csv", ".tsv"})


@dataclass(frozen=True)
class VideoInput:
    """One video: ``path`` (as found), ``rel`` (its output name below the output folder, with
    ``.npz``), ``size`` in bytes (-1 if it cannot be read)."""

    path: str
    rel: str
    size: int


@dataclass(frozen=True)
class Shard:
    """This process's share: ``index`` of ``count``; ``local_rank`` picks the GPU (or None)."""

    index: int = 0
    count: int = 1
    local_rank: int | None = None
    source: str = "single"

    @property
    def label(self) -> str:
        return f"{self.index}/{self.count}"


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return -1


def _read_list(path: str) -> list[str]:
    """The entries of a list file, bounded (``milnce.listfiles``): a path line over
    ``MAX_PATH_LINE`` characters, a CSV row over ``MAX_CSV_ROW``, more than ``MAX_ENTRIES`` entries,
    a device, FIFO or folder are refused in one line."""
    base = os.path.dirname(os.path.abspath(path))
    label = show_path(path)
    what = "not a list of videos, one path a line"
    try:
        if path.lower().endswith((".csv", ".tsv")):
            with open_list(path, label) as f:  # utf-8-sig: a BOM (spreadsheet exports) is dropped
                dialect = "excel-tab" if path.lower().endswith(".tsv") else "excel"
                rows = read_csv_rows(f, label, what="not a CSV list of videos", dialect=dialect)
                header = next(rows, None) or []
                cols = [c.strip() for c in header]
                if "video_path" not in cols:
                    raise UsageError(f"{label}: a CSV list needs a 'video_path' column "
                                     f"(columns: {show_path(', '.join(header)[:200]) or 'none'})")
                col = cols.index("video_path")
                entries = [(row[col] if col < len(row) else "").strip() for row in rows]
        else:
            entries = read_lines(path, label, what=what, max_line=MAX_PATH_LINE, comments=False)
    except UnicodeDecodeError:
        raise UsageError(f"{label}: not a text list of videos (not UTF-8); give video files directly") from None
    out = []
    for e in entries:
        if not e or e.startswith("#"):
            continue
        out.append(os.path.normpath(e if os.path.isabs(e) else os.path.join(base, e)))
    return out


def _walk(folder: str, roots: Sequence[str]) -> list[str]:
    return list(walk_videos(folder, roots=roots))


def collect_inputs(paths: Iterable[str | os.PathLike[str]]) -> list[VideoInput]:
    """The videos named by ``paths`` (files, folders, list files), each once, with output names.

    A path that does not exist is an error (``UsageError``); an entry of a list that does not
    exist is kept (it fails when read, and is reported). Output names that would collide (e.g.
    ``a.mp4`` and ``a.webm``) keep their suffix (``a.mp4.npz``), then get ``-1``, ``-2``..."""
    rows: list[tuple[str, str]] = []  # (path, rel with the video suffix)
    given = [os.fspath(p) for p in paths]
    roots = [p for p in given if os.path.isdir(p)]  # links may lead anywhere inside the folders given
    for p in given:
        if os.path.isdir(p):
            found = _walk(p, roots)
            if not found:
                raise UsageError(f"{p}: no video files in this folder (looked for {', '.join(sorted(VIDEO_EXTENSIONS))})")
            rows += [(f, os.path.relpath(f, p)) for f in found]
        elif os.path.splitext(p)[1].lower() in LIST_EXTENSIONS and os.path.exists(p):  # a device: refused
            listed = _read_list(p)
            if not listed:
                raise UsageError(f"{p}: the list names no videos")
            root = os.path.commonpath([os.path.dirname(x) for x in listed])
            rows += [(x, os.path.relpath(x, root)) for x in listed]
        elif os.path.exists(p):
            rows.append((p, os.path.basename(os.path.normpath(p))))
        else:
            raise UsageError(f"{p}: no such file or folder")
    seen: set[str] = set()
    unique = []
    for path, rel in rows:
        key = os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            unique.append((path, rel))
    stems: dict[str, int] = {}
    for _, rel in unique:
        stem = os.path.splitext(rel)[0]
        stems[stem] = stems.get(stem, 0) + 1
    used: set[str] = set()
    out = []
    for path, rel in unique:
        stem = os.path.splitext(rel)[0]
        name = stem if stems[stem] == 1 and stem not in used else rel
        cand, i = name, 1
        while cand in used:
            cand = f"{name}-{i}"
            i += 1
        used.add(cand)
        out.append(VideoInput(path, cand + ".npz", _size(path)))
    return out


def output_path(out_dir: str | os.PathLike[str], item: VideoInput) -> str:
    """Where ``item``'s feature file goes."""
    return os.path.join(os.fspath(out_dir), item.rel)


def shard_inputs(items: Sequence[VideoInput], index: int, count: int) -> list[VideoInput]:
    """Share ``index`` of ``count``: disjoint, complete, balanced by file size, deterministic
    (independent of the order of ``items``); returned in input order."""
    if not (isinstance(count, int) and count >= 1 and isinstance(index, int) and 0 <= index < count):
        raise UsageError(f"shard must be I/N with 0 <= I < N, got {index}/{count}")
    if count == 1:
        return list(items)
    order = sorted(range(len(items)), key=lambda i: (-max(items[i].size, 0), items[i].rel, items[i].path))
    if count >= len(items):  # every share is empty when its turn comes: video k of the order goes to share k
        return [items[order[index]]] if index < len(items) else []
    loads = [(0, s) for s in range(count)]  # (bytes, shard): the lightest share takes the next video
    heapq.heapify(loads)
    mine = set()
    for i in order:
        load, s = heapq.heappop(loads)
        if s == index:
            mine.add(i)
        heapq.heappush(loads, (load + max(items[i].size, 0) + 1, s))
    return [items[i] for i in sorted(mine)]


def _env_int(env: Mapping[str, str], name: str) -> int | None:
    raw = env.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise UsageError(f"environment variable {name}={raw!r} is not a whole number") from None


def resolve_shard(shard: str | None = None, env: Mapping[str, str] | None = None) -> Shard:
    """This process's share from ``--shard I/N`` and the launchers' environment: torchrun
    (``RANK``/``WORLD_SIZE``, ``LOCAL_RANK``) and SLURM arrays (``SLURM_ARRAY_TASK_ID`` minus
    ``SLURM_ARRAY_TASK_MIN``, ``SLURM_ARRAY_TASK_COUNT``). Given together they nest: the
    ``--shard`` share is split over the array tasks, and each task's over the torchrun ranks."""
    env = os.environ if env is None else env
    index, count, sources = 0, 1, []
    if shard is not None:
        try:
            a, b = str(shard).split("/")
            i, n = int(a), int(b)
        except ValueError:
            raise UsageError(f"--shard must be I/N (e.g. 0/4: the first of 4 shares), got {shard!r}") from None
        if not (n >= 1 and 0 <= i < n):
            raise UsageError(f"--shard I/N needs 0 <= I < N, got {shard!r}")
        index, count = i, n
        sources.append("--shard")
    task, tasks = _env_int(env, "SLURM_ARRAY_TASK_ID"), _env_int(env, "SLURM_ARRAY_TASK_COUNT")
    if task is not None and tasks is not None and tasks > 1:
        task -= _env_int(env, "SLURM_ARRAY_TASK_MIN") or 0
        if not 0 <= task < tasks:
            raise UsageError(f"SLURM_ARRAY_TASK_ID gives task {task} of {tasks}: use a contiguous --array range")
        index, count = index * tasks + task, count * tasks
        sources.append("slurm-array")
    rank, world = _env_int(env, "RANK"), _env_int(env, "WORLD_SIZE")
    if rank is not None and world is not None and world > 1:
        if not 0 <= rank < world:
            raise UsageError(f"RANK={rank} is not in [0, WORLD_SIZE={world})")
        index, count = index * world + rank, count * world
        sources.append("torchrun")
    return Shard(index, count, _env_int(env, "LOCAL_RANK"), "+".join(sources) or "single")
