"""CrossTask (Zhukov et al., CVPR 2019): the release's files and the zero-shot step-localisation protocol.

Release files (``crosstask_release.zip`` of github.com/DmZhukov/CrossTask), read as distributed:

- ``tasks_primary.txt``: blocks of five lines (task id, title, URL, number of steps, the step
  texts separated by commas) and a blank line (the reference's ``data.read_task_info``).
- ``videos.csv`` / ``videos_val.csv``: ``task,video_id,url`` rows, no header (``data.get_vids``).
- ``annotations/<task>_<video_id>.csv``: ``step,start,end`` rows, 1-based step numbers, seconds.
  The ground truth of a video with ``T`` positions is the ``T x K`` 0/1 matrix with ones on
  positions ``floor(start) .. ceil(end) - 1`` of each row's step (``data.read_assignment``; the
  slice silently stops at ``T``).

Protocol (zero-shot, as in the HowTo100M and MIL-NCE papers; the split as in the VideoCLIP /
MMPT zero-shot CrossTask evaluation, fairseq
``examples/MMPT/projects/retri/videoclip/test_crosstask_zs_videoclip.yaml``: ``test_path:
.../videos_val.csv``, whose ``mmpt/evaluators/predictor.py`` ``CrossTaskPredictor`` ports the
reference's ``train.py`` evaluation; the reference
``train.py`` itself tests on a random split of the other videos of ``videos.csv``):

- the primary tasks (``tasks_primary.txt``, 18) and their videos in ``videos_val.csv``;
- positions: a video of ``D`` seconds has ``T = ceil(D)`` positions (position ``t`` is the second
  ``[t, t + 1)``; a trailing partial second is a position); a video with fewer positions than
  its task has steps has no valid assignment and is skipped (counted);
- position ``t`` is scored by the window of the model's ``num_frames`` frames at ``fps`` centred
  on ``t + 0.5`` and shifted to lie inside the video: start ``clip(t + 0.5 - W / 2, 0,
  max(0, D - W))`` with ``W = num_frames / fps`` (3.2 s by default); score = text embedding .
  window embedding, for every step text of the task;
- the cost decoded by the DP (``milnce.eval.dp``): ``-log_softmax`` over the task's steps at
  each position (headline: the reference's and MMPT's evaluation decode ``-log_softmax`` of
  their model's outputs), and ``-scores`` (reported beside it);
- recall of a task: matched steps / annotated steps over the task's videos pooled
  (``train.get_recalls``); a step is matched when its assigned position is inside one of its
  annotated intervals; annotated steps are the distinct steps with at least one annotated
  position inside the video's positions. The result is the mean over tasks.
- also reported, clearly labelled: per-step argmax localisation (each step at the position
  where its raw score is highest; the first on ties), with the same recall.

Bad input: an annotation row naming a step the task does not have, or a number that is not a
finite number of seconds >= 0, or a task block with a wrong step count, is an error naming the
file and line. Rows the reference tolerates are counted and skipped: a start after its end
(an empty slice there), a row wholly past the video's end; a row running past the end is cut
at the last position (counted).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import MissingFileError, UsageError
from ..listfiles import MAX_CSV_ROW, bounded_lines, open_list
from ..printable import show_path
from .items import is_whole, parse_seconds, quoted

__all__ = [
    "AnnotationIssues",
    "CrossTaskRelease",
    "CrossTaskTask",
    "CrossTaskVideo",
    "ground_truth",
    "load_release",
    "n_positions",
    "position_starts",
    "read_annotation",
    "read_tasks",
    "read_videos",
    "step_recall",
]

_SAFE_ID = re.compile(r"[A-Za-z0-9_.\-]+")  # YouTube ids and task numbers: never a path


@dataclass(frozen=True)
class CrossTaskTask:
    """One block of ``tasks_primary.txt``."""

    task_id: str
    title: str
    url: str
    steps: tuple[str, ...]


@dataclass(frozen=True)
class CrossTaskVideo:
    """One row of ``videos*.csv``; ``line`` is its 1-based line number."""

    task_id: str
    video_id: str
    url: str
    line: int


@dataclass
class AnnotationIssues:
    """Rows the reference tolerates, skipped or cut here and counted: ``file:line`` each."""

    start_after_end: list[str] = field(default_factory=list)
    past_video_end: list[str] = field(default_factory=list)  # wholly after the last position
    cut_at_video_end: list[str] = field(default_factory=list)  # runs past the last position

    def to_dict(self) -> dict[str, list[str]]:
        return {"start_after_end": self.start_after_end, "past_video_end": self.past_video_end,
                "cut_at_video_end": self.cut_at_video_end}


@dataclass
class CrossTaskRelease:
    """The parts of a CrossTask release one evaluation needs."""

    root: Path
    tasks: dict[str, CrossTaskTask]
    videos: list[CrossTaskVideo]
    videos_file: Path
    other_tasks: int = 0  # rows of the videos file whose task is not a primary task

    def annotation_path(self, video: CrossTaskVideo) -> Path:
        return self.root / "annotations" / f"{video.task_id}_{video.video_id}.csv"


def _lines(path: Path) -> list[str]:
    if not path.exists():
        raise MissingFileError(f"CrossTask release file not found: {path}")
    if path.is_dir():
        raise UsageError(f"{path}: a folder, expected a text file")
    try:
        return [line.rstrip("\r\n") for line in _bounded(path)]
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: not a UTF-8 text file ({exc.reason})") from None


def _shown_id(value: str, path: Path) -> str:
    """A task id for a message: as it is when it is a plain short id, else ``quoted``."""
    return value if len(value) <= 40 and _SAFE_ID.fullmatch(value) else quoted(value, path)


def read_tasks(path: str | os.PathLike[str]) -> dict[str, CrossTaskTask]:
    """``tasks_primary.txt`` (or ``tasks_related.txt``): task id -> its title, URL and steps."""
    p = Path(path)
    lines = _lines(p)
    tasks: dict[str, CrossTaskTask] = {}
    i = 0
    while i < len(lines):
        if not lines[i].strip():
            i += 1
            continue
        if i + 4 >= len(lines):
            raise UsageError(f"{p}, line {i + 1}: incomplete task block (expected task id, title, URL, "
                             f"number of steps and the comma-separated steps)")
        task_id, title, url, count, steps_line = (lines[i + j].strip() for j in range(5))
        if not is_whole(count):
            raise UsageError(f"{p}, line {i + 4}: the number of steps must be a whole number (ASCII digits), "
                             f"got {quoted(count, p)}")
        n = int(count)
        steps = tuple(s.strip() for s in steps_line.split(","))
        if n < 1 or len(steps) != n or not all(steps):
            raise UsageError(f"{p}, line {i + 5}: task {_shown_id(task_id, p)} says {n} steps but lists {len(steps)} "
                             f"({sum(1 for s in steps if not s)} empty)")
        if task_id in tasks:
            raise UsageError(f"{p}, line {i + 1}: task {_shown_id(task_id, p)} appears twice")
        if not task_id:
            raise UsageError(f"{p}, line {i + 1}: empty task id")
        tasks[task_id] = CrossTaskTask(task_id, title, url, steps)
        i += 5
    if not tasks:
        raise UsageError(f"{p}: no task")
    return tasks


def read_videos(path: str | os.PathLike[str]) -> list[CrossTaskVideo]:
    """``videos.csv`` / ``videos_val.csv``: ``task,video_id,url`` rows (no header)."""
    p = Path(path)
    out: list[CrossTaskVideo] = []
    seen: set[tuple[str, str]] = set()
    for n, line in enumerate(_lines(p), 1):
        if not line.strip():
            continue
        parts = [x.strip() for x in line.split(",", 2)]
        if len(parts) < 2 or not parts[0] or not parts[1]:
            raise UsageError(f"{p}, line {n}: expected task,video_id,url, got {len(parts)} field(s)")
        for what, value in (("task id", parts[0]), ("video id", parts[1])):
            if not _SAFE_ID.fullmatch(value) or value in (".", ".."):
                raise UsageError(f"{p}, line {n}: {what} {quoted(value, p)} is not a plain name (letters, digits, -_.)")
        if (parts[0], parts[1]) in seen:
            continue
        seen.add((parts[0], parts[1]))
        out.append(CrossTaskVideo(parts[0], parts[1], parts[2] if len(parts) > 2 else "", n))
    return out


def read_annotation(path: str | os.PathLike[str], n_steps: int) -> list[tuple[int, float, float, int]]:
    """``(step (1-based), start, end, line)`` of each row of an annotation file."""
    p = Path(path)
    rows = []
    for n, line in enumerate(_lines(p), 1):
        if not line.strip():
            continue
        where = f"{p}, line {n}"
        parts = [x.strip() for x in line.split(",")]
        if len(parts) != 3:
            raise UsageError(f"{where}: expected step,start,end, got {len(parts)} field(s)")
        if not is_whole(parts[0]):
            raise UsageError(f"{where}: the step must be a whole number (ASCII digits), got {quoted(parts[0], p)}")
        step = int(parts[0])
        if not 1 <= step <= n_steps:
            raise UsageError(f"{where}: step {step} does not exist: the task has steps 1..{n_steps}")
        rows.append((step, parse_seconds(parts[1], "start", where), parse_seconds(parts[2], "end", where), n))
    return rows


def ground_truth(rows: list[tuple[int, float, float, int]], n_steps: int, positions: int, where: str,
                 issues: AnnotationIssues | None = None) -> np.ndarray:
    """The ``positions x n_steps`` 0/1 matrix of annotated positions (the reference's rule)."""
    y = np.zeros((positions, n_steps), np.uint8)
    for step, start, end, line in rows:
        a, b = int(math.floor(start)), int(math.ceil(end))
        loc = f"{where}:{line}"
        if start > end:
            if issues is not None:
                issues.start_after_end.append(loc)
            continue
        if a >= positions:
            if issues is not None:
                issues.past_video_end.append(loc)
            continue
        if b > positions and issues is not None:
            issues.cut_at_video_end.append(loc)
        y[a:min(b, positions), step - 1] = 1
    return y


def n_positions(duration: float) -> int:
    """Positions (whole seconds) of a video of ``duration`` seconds: ``ceil(duration)``."""
    if not math.isfinite(duration) or duration <= 0:
        return 0
    return int(math.ceil(duration - 1e-9))


def position_starts(positions: int, duration: float, window: float) -> np.ndarray:
    """Window start of each position: centred on ``t + 0.5``, shifted to lie inside the video."""
    centres = np.arange(positions, dtype=np.float64) + 0.5
    return np.clip(centres - window / 2.0, 0.0, max(0.0, duration - window))


def step_recall(true: list[np.ndarray], positions: list[np.ndarray]) -> tuple[int, int]:
    """``(matched, annotated)`` steps over videos: ``true[i]`` is ``T x K`` 0/1, ``positions[i]``
    the assigned position of each of the ``K`` steps."""
    matched = annotated = 0
    for y, pos in zip(true, positions):
        annotated += int((y.sum(axis=0) > 0).sum())
        p = np.asarray(pos, np.int64)
        matched += int(y[p, np.arange(len(p))].sum())
    return matched, annotated


def _release_root(path: Path) -> Path:
    if not path.exists():
        raise MissingFileError(f"CrossTask release folder not found: {path}")
    if not path.is_dir():
        raise UsageError(f"--annotations must be the CrossTask release folder (crosstask_release/), got a file: {path}")
    for cand in (path, path / "crosstask_release"):
        if (cand / "tasks_primary.txt").is_file():
            return cand
    raise UsageError(f"{path}: not a CrossTask release folder (no tasks_primary.txt; unzip crosstask_release.zip)")


def load_release(path: str | os.PathLike[str], videos_file: str = "videos_val.csv",
                 limit: int | None = None) -> CrossTaskRelease:
    """The primary tasks and the videos of ``videos_file`` (default ``videos_val.csv``) whose task
    is primary. ``limit``: the first ``limit`` videos only (a quick trial)."""
    root = _release_root(Path(path))
    tasks = read_tasks(root / "tasks_primary.txt")
    vf = root / videos_file
    rows = read_videos(vf)
    videos = [v for v in rows if v.task_id in tasks]
    if not videos:
        raise UsageError(f"{vf}: no video of a primary task")
    if limit is not None:
        if isinstance(limit, bool) or int(limit) < 1:
            raise UsageError(f"limit must be a whole number >= 1, got {limit!r}")
        videos = videos[: int(limit)]
    return CrossTaskRelease(root, tasks, videos, vf, other_tasks=len(rows) - len([v for v in rows if v.task_id in tasks]))


def _bounded(path: Path) -> list[str]:
    with open_list(path, show_path(str(path))) as f:
        return list(bounded_lines(f, show_path(str(path)), max_line=MAX_CSV_ROW, what="not a release text file"))
