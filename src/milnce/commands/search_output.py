"""How ``milnce search`` reads its queries and writes its results: the queries file streamed in
batches with bounded memory (``iter_queries_file``), and the result formats (table, JSON, CSV)
written as they come (``SearchOutput``)."""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Iterable, Iterator
from typing import Any

from ..listfiles import bounded_lines, open_list
from ..plural import plural
from ..printable import show_path
from .common import CommandError

__all__ = ["marked", "print_cues", "QUERY_BATCH", "MAX_QUERY_LINE", "CSV_FIELDS", "fmt_time", "open_queries_file", "iter_queries_file",
           "batches", "finite", "print_results", "SearchOutput"]


def fmt_time(t: float) -> str:
    t = max(0.0, float(t))
    h, rem = divmod(t, 3600)
    m, s = divmod(rem, 60)
    return f"{int(h)}:{int(m):02d}:{s:04.1f}"


def print_results(query: str, moments: list, problem: str | None, by_video: bool, first: int = 1) -> None:
    print(f"\n{show_path(repr(query))}:")
    if problem:
        print(f"  no results: {problem}")
        return
    if not moments:
        print("  no results")
        return
    print(f"  {'#':>3}  {'score':>8}  {'cosine':>6}  {'pctile':>6}  {'start':>9}  {'end':>9}  "
          f"{'video (best moment)' if by_video else 'video'}")
    for i, m in enumerate(moments, first):
        gone = "  (file missing)" if not m.exists else ""
        cos = "" if m.cosine is None else f"{m.cosine:.3f}"
        pct = "" if m.percentile is None else f"{m.percentile:.1f}"
        print(f"  {i:3d}  {m.score:8.3f}  {cos:>6}  {pct:>6}  {fmt_time(m.start):>9}  {fmt_time(m.end):>9}  "
              f"{show_path(m.path)}{gone}")
        print_cues(m)


def marked(text: str, spans: list[list[int]]) -> str:
    """A cue's text with its matched words between ``*`` (the terminal's highlighting)."""
    out, at = [], 0
    for a, b in sorted((int(a), int(b)) for a, b in spans):
        if a < at or b > len(text):
            continue
        out += [text[at:a], "*", text[a:b], "*"]
        at = b
    return "".join(out) + text[at:]


def print_cues(m: Any) -> None:
    """Under a hybrid or speech moment: its visual and speech scores and its matched cue lines."""
    if getattr(m, "speech_score", None) is None:
        return
    vis = "" if m.visual_score is None else f"visual {m.visual_score:.3f}, "
    print(f"{'':8}{vis}speech {m.speech_score:.3f}")
    for c in m.cues or []:
        lang = f" [{show_path(c['lang'])}]" if c.get("lang") else ""
        print(f"{'':8}{fmt_time(c['start'])}-{fmt_time(c['end'])}{lang}  {show_path(marked(c['text'], c['matches']))}")


CSV_FIELDS = ("query", "rank", "video_id", "path", "start", "end", "score", "cosine", "percentile", "peak", "exists")


QUERY_BATCH = 256  # queries searched (and printed) together: memory stays bounded for any number of queries
MAX_QUERY_LINE = 10_000  # characters: a longer "line" is not a query (e.g. /dev/zero, a binary file)


def open_queries_file(name: str) -> Any:
    """The queries file opened as UTF-8 text (``-``: standard input); refuses devices and folders."""
    import io

    if name == "-":
        return io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8") if hasattr(sys.stdin, "buffer") else sys.stdin
    return open_list(os.path.expanduser(name), f"--queries-file {show_path(name)}", fifo=True, encoding="utf-8",
                     error=CommandError)


def iter_queries_file(name: str, f: Any) -> Iterator[str]:
    """The queries of an opened queries file, one per line, streamed: blank lines and lines
    starting with ``#`` are skipped (comments, as in list files). Refuses what is not a text file
    of lines: NUL bytes, bytes that are not UTF-8, a line over ``MAX_QUERY_LINE`` characters."""
    try:
        for line in bounded_lines(f, f"--queries-file {show_path(name)}", max_line=MAX_QUERY_LINE,
                                  what="not a text file of queries, one per line", error=CommandError):
            q = line.strip()
            if q and not q.startswith("#"):
                yield q
    finally:
        if name != "-":
            f.close()


def batches(items: Iterable[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for x in items:
        batch.append(x)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def finite(value: Any) -> Any:
    """JSON-safe: NaN and infinities as null (``search --json`` never prints ``NaN``)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite(v) for v in value]
    return value


class SearchOutput:
    """Writes search results as they come, in one of the formats (table, json, csv)."""

    def __init__(self, fmt: str, by_video: bool, offset: int = 0) -> None:
        import csv

        self.fmt, self.by_video, self.offset = fmt, by_video, offset
        self.k, self.fewer_note = 0, ""  # a table says when a filter leaves fewer than -k results
        self.count = 0
        self.failed = 0
        self.csv = csv.writer(sys.stdout, lineterminator="\n") if fmt == "csv" else None

    def start(self, header: dict[str, Any], table_line: str) -> None:
        if self.fmt == "json":
            head = json.dumps(finite({**header, "results": []}), allow_nan=False)
            sys.stdout.write(head[:-2])  # without the closing "]}"
        elif self.csv is not None:
            self.csv.writerow(CSV_FIELDS)
        else:
            print(table_line)

    def add(self, query: str, problem: str | None, moments: list[Any]) -> None:
        if problem is not None:
            self.failed += 1
        if self.fmt == "json":
            item = {"query": query, "error": problem, "moments": [m.to_dict() for m in moments]}
            sys.stdout.write((", " if self.count else "") + json.dumps(finite(item), allow_nan=False))
        elif self.csv is not None:
            if problem is not None:
                print(f"milnce: query {query!r} failed: {problem} (no rows)", file=sys.stderr)
            for rank, m in enumerate(moments, self.offset + 1):
                d = m.to_dict()
                self.csv.writerow([query, rank, *(finite(d[f]) for f in CSV_FIELDS[2:])])
        else:
            print_results(query, moments, problem, self.by_video, self.offset + 1)
            if self.fewer_note and problem is None and len(moments) < self.k:
                print(f"  (only {plural(self.offset + len(moments), 'result')} {self.fewer_note})")
        self.count += 1

    def finish(self) -> None:
        if self.fmt == "json":
            sys.stdout.write("]}\n")
        elif self.csv is not None and self.failed:
            print(f"milnce: {self.failed} of {plural(self.count, 'query', 'queries')} failed and "
                  f"{'has' if self.failed == 1 else 'have'} no rows", file=sys.stderr)
        sys.stdout.flush()
