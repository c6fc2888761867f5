"""What an evaluation row and a loaded benchmark are (``EvalItem``, ``Benchmark``) and how a time is
read (``parse_seconds``): what the benchmark readers (``datasets``, ``ucf101``, ``crosstask``) share,
below them so that neither imports the other."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..errors import UsageError

__all__ = ["TITLES", "EvalItem", "Benchmark", "round_robin", "parse_seconds", "quoted", "is_whole"]

_WHOLE = re.compile(r"[0-9]{1,9}\Z", re.ASCII)


TITLES = {
    "youcook2": "YouCook2 validation, zero-shot text-to-video retrieval",
    "msrvtt": "MSR-VTT 1k-A test, zero-shot text-to-video retrieval",
    "hmdb51": "HMDB-51, linear probe on mixed_5c (top-1, splits 1-3)",
    "ucf101": "UCF-101, linear probe on mixed_5c (top-1, splits 1-3)",
}


@dataclass(frozen=True)
class EvalItem:
    """One annotation row: a clip (``start``/``end`` seconds; ``None`` = the whole video) with
    its caption (retrieval) or its class and split membership (classification)."""

    row: int
    video_id: str
    start: float | None = None
    end: float | None = None
    text: str | None = None
    label: str | None = None
    folder: str | None = None  # the sub-folder the protocol puts the video in (task / class)
    splits: tuple[int, ...] = ()


@dataclass
class Benchmark:
    """A benchmark's rows (in annotation order) and where they came from."""

    name: str
    items: list[EvalItem]
    annotations: str
    total_rows: int = 0
    limited: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def title(self) -> str:
        return TITLES[self.name]

    @property
    def task(self) -> str:
        return "classification" if self.name in ("hmdb51", "ucf101") else "retrieval"


def round_robin(items: Sequence[EvalItem], n: int) -> list[EvalItem]:
    """The first ``n`` items taken round-robin over the labels (every class a quick trial can have),
    in annotation order."""
    by_label: dict[str, list[EvalItem]] = {}
    for it in items:
        by_label.setdefault(it.label or "", []).append(it)
    queues = list(by_label.values())
    out: list[EvalItem] = []
    k = 0
    while len(out) < n:
        for q in queues:
            if k < len(q) and len(out) < n:
                out.append(q[k])
        k += 1
    return sorted(out, key=lambda it: it.row)


def is_whole(text: str) -> bool:
    """``text`` is a whole number of 1 to 9 ASCII digits (not ``²``, ``١``, ``1_0``)."""
    return bool(_WHOLE.match(text))


def quoted(value: str, path: str | os.PathLike[str] | None = None, n: int = 40) -> str:
    """The offending field of a data file for an error message: its ``repr``, at most ``n``
    characters; nothing of it when ``path`` is reached through a symbolic link (an error must not
    show the contents of a file the link points at)."""
    if path is not None and os.path.realpath(path) != os.path.abspath(path):
        return "(not shown: the file is reached through a symbolic link)"
    text = str(value)
    return repr(text[:n]) + ("..." if len(text) > n else "")


def parse_seconds(value: str, what: str, where: str) -> float:
    """``value`` as seconds (ASCII digits, finite, >= 0); a ``UsageError`` naming ``where`` and ``what`` otherwise."""
    s = str(value).strip()
    if not s.isascii() or "_" in s:  # float() takes Arabic-Indic digits and 1_0
        raise UsageError(f"{where}: {what} must be a number of seconds (ASCII digits), got {quoted(s, n=20)}")
    try:
        x = float(s)
    except (TypeError, ValueError):
        raise UsageError(f"{where}: {what} must be a number of seconds, got {quoted(s, n=20)}") from None
    if not math.isfinite(x) or x < 0:
        raise UsageError(f"{where}: {what} must be finite and >= 0, got {quoted(s, n=20)}")
    return x
