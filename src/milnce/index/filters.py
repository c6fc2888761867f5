"""Which videos a search may return: ``VideoFilter`` (a folder, a path glob, a modification-time
range, a duration range), checked once against the collection (``VideoFilter.validated``) and
then applied per video (``matches``) or to the whole table (``select_videos``).

Semantics (what the README and ``--help`` say):

- ``under``: a folder; a video matches if its path is inside it (any depth). ``~`` is expanded and
  a relative folder is taken from the current directory. A folder outside the collection (the
  deepest folder holding every indexed video) is an error, not an empty result.
- ``path_glob``: ``*`` and ``?`` match within one path component, ``[abc]``/``[!abc]`` one
  character, ``**`` any number of components (``**/`` also none). A glob without ``/`` matches
  the file name (``*.mp4``, ``cook*``); a glob with ``/`` matches the path relative to the
  collection folder (``kitchen/**/2024-*.mp4``). Absolute globs and ``..`` components are refused
  (a glob cannot escape the collection). Matching is case-sensitive.
- ``mtime_min <= mtime < mtime_max`` (seconds since the epoch, the file's modification time when
  indexed); ``parse_when`` reads ``2024-03-01``, ``2024-03-01T12:00`` (local time unless a zone is
  given) or epoch seconds.
- ``duration_min <= duration <= duration_max`` (seconds).

Every field is optional; an empty filter matches everything. Impossible ranges (min above max, a
negative or non-finite bound) are one ``FilterError`` each; a filter that matches no indexed video
is ``NoVideoMatchesError`` from ``require_matches`` (the search says so instead of returning
nothing).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Protocol, TypeVar, cast

from ..errors import MilnceError
from ..plural import plural

__all__ = ["VideoFilter", "FilterError", "NoVideoMatchesError", "collection_root", "select_videos",
           "require_matches", "parse_when", "glob_matcher", "GlobMatcher"]


class FilterError(MilnceError, ValueError):
    """A filter that cannot be applied: an impossible range, a glob or folder outside the collection."""


class NoVideoMatchesError(FilterError):
    """The filter is valid but matches no indexed video."""


class VideoLike(Protocol):
    """What a filter reads of a video (``VideoRecord`` has it)."""

    @property
    def path(self) -> str: ...
    @property
    def mtime(self) -> float: ...
    @property
    def duration(self) -> float: ...


V = TypeVar("V", bound=VideoLike)


# the token kinds of a compiled glob: a literal character, "?", "[...]", "*", "**", "**/"
_LIT, _ONE, _CLASS, _STAR, _ANY, _DIRS = range(6)


class GlobMatcher:
    """A compiled path glob (see the module docstring), matched without backtracking.

    The glob becomes a small automaton over its tokens and ``match`` runs it over the text as a
    set of live states, so a match costs O(len(text) * len(glob)) whatever the pattern: no run of
    ``*`` (``**********Z``, ``*a*a*a*a*a*aZ``) can make it exponential, as a backtracking regular
    expression would."""

    __slots__ = ("pattern", "_tokens")

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self._tokens = self._parse(pattern)

    @classmethod
    def _parse(cls, pattern: str) -> list[tuple[int, object]]:
        tokens: list[tuple[int, object]] = []
        i, n = 0, len(pattern)
        while i < n:
            c = pattern[i]
            if pattern.startswith("**/", i):
                if not tokens or tokens[-1][0] != _DIRS:  # "**/**/" is the same as "**/"
                    tokens.append((_DIRS, None))
                i += 3
            elif pattern.startswith("**", i):
                tokens.append((_ANY, None))
                i += 2
            elif c == "*":
                tokens.append((_STAR, None))
                i += 1
            elif c == "?":
                tokens.append((_ONE, None))
                i += 1
            elif c == "[" and (j := pattern.find("]", i + 2 if pattern[i + 1:i + 2] in ("!", "]") else i + 1)) > 0:
                body = pattern[i + 1:j]
                neg = body.startswith("!")
                tokens.append((_CLASS, (neg, _class_ranges(body[1:] if neg else body, pattern))))
                i = j + 1
            else:
                tokens.append((_LIT, c))
                i += 1
        # adjacent loops of the same kind match what one of them matches: keep one (fewer states)
        out: list[tuple[int, object]] = []
        for t in tokens:
            if out and t[0] in (_STAR, _ANY) and out[-1][0] == t[0]:
                continue
            out.append(t)
        return out

    def _closure(self, states: set[int]) -> set[int]:
        """``states`` plus every state reachable without reading a character (loops match empty)."""
        todo, seen = list(states), set(states)
        toks = self._tokens
        while todo:
            s = todo.pop()
            if s >= 0 and s < len(toks) and toks[s][0] in (_STAR, _ANY, _DIRS):
                if s + 1 not in seen:
                    seen.add(s + 1)
                    todo.append(s + 1)
        return seen

    def match(self, text: str) -> bool:
        """Whether the whole of ``text`` matches the glob."""
        toks, m = self._tokens, len(self._tokens)
        states = self._closure({0})
        for c in text:
            nxt: set[int] = set()
            for s in states:
                if s < 0:  # inside a "**/" run that has read characters: it must end on "/"
                    k = -s - 1
                    nxt.add(s)
                    if c == "/":
                        nxt.add(k + 1)
                    continue
                if s >= m:
                    continue
                kind, arg = toks[s]
                if kind == _LIT:
                    if c == arg:
                        nxt.add(s + 1)
                elif kind == _ONE:
                    if c != "/":
                        nxt.add(s + 1)
                elif kind == _CLASS:
                    cls_arg = cast("tuple[bool, tuple[tuple[str, str], ...]]", arg)
                    if c != "/" and any(lo <= c <= hi for lo, hi in cls_arg[1]) != cls_arg[0]:
                        nxt.add(s + 1)
                elif kind == _STAR:
                    if c != "/":
                        nxt.add(s)
                elif kind == _ANY:
                    nxt.add(s)
                else:  # _DIRS: zero or more whole components, i.e. empty or anything ending in "/"
                    nxt.add(-s - 1)
                    if c == "/":
                        nxt.add(s + 1)
            if not nxt:
                return False
            states = self._closure(nxt)
        return m in states


def _class_ranges(body: str, pattern: str) -> tuple[tuple[str, str], ...]:
    """The character ranges of a ``[...]`` body (``a-z`` a range; ``-`` first or last literal)."""
    ranges: list[tuple[str, str]] = []
    i = 0
    while i < len(body):
        if i + 2 < len(body) and body[i + 1] == "-":
            lo, hi = body[i], body[i + 2]
            if lo > hi:
                raise FilterError(f"--path-glob {pattern!r}: the range {lo}-{hi} in [{body}] is reversed")
            ranges.append((lo, hi))
            i += 3
        else:
            ranges.append((body[i], body[i]))
            i += 1
    return tuple(ranges)


def glob_matcher(pattern: str) -> GlobMatcher:
    """The compiled path glob (``FilterError`` for a reversed ``[z-a]`` range)."""
    return GlobMatcher(pattern)


EARLIEST_TIME = -62_135_424_000.0  # 0001-01-03 UTC: every time zone can still show it as a date
LATEST_TIME = 253_402_041_600.0  # 9999-12-28 UTC


def parse_when(text: str | float) -> float:
    """Epoch seconds from a number, ``YYYY-MM-DD`` or an ISO date-time (local time unless zoned)."""
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        s = text.strip()
        try:
            value = float(s)
        except ValueError:
            try:
                value = datetime.fromisoformat(s).timestamp()
            except (ValueError, OverflowError, OSError):
                raise FilterError(f"{text!r} is not a date (YYYY-MM-DD, YYYY-MM-DDTHH:MM) or epoch seconds") from None
    if not math.isfinite(value):
        raise FilterError(f"{text!r} is not a finite time")
    if not EARLIEST_TIME <= value <= LATEST_TIME:
        raise FilterError(f"{text!r} is out of range: epoch seconds from {EARLIEST_TIME:.0f} to {LATEST_TIME:.0f} "
                          "(the years 1 to 9999)")
    return value


def collection_root(paths: Iterable[str]) -> str:
    """The deepest folder that holds every path (``/`` for an empty collection)."""
    dirs = [os.path.dirname(os.path.abspath(p)) for p in paths]
    return os.path.commonpath(dirs) if dirs else os.sep


def _when(t: float | None) -> str:
    return "" if t is None else datetime.fromtimestamp(t).isoformat(" ", "seconds")


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


@dataclass(frozen=True)
class VideoFilter:
    """A restriction on the videos a search returns (all fields optional; see the module docstring)."""

    under: str | None = None
    path_glob: str | None = None
    mtime_min: float | None = None
    mtime_max: float | None = None
    duration_min: float | None = None
    duration_max: float | None = None
    root: str | None = None  # the collection folder (set by ``validated``)

    @property
    def is_empty(self) -> bool:
        return all(v is None for v in (self.under, self.path_glob, self.mtime_min, self.mtime_max,
                                       self.duration_min, self.duration_max))

    def describe(self) -> str:
        """The filter in words, for messages (``under /x, *.mp4, modified 2024-01-01..``)."""
        parts = []
        if self.under is not None:
            parts.append(f"under {self.under}")
        if self.path_glob is not None:
            parts.append(f"path {self.path_glob}")
        if self.mtime_min is not None or self.mtime_max is not None:
            parts.append(f"modified {_when(self.mtime_min)}..{_when(self.mtime_max)}")
        if self.duration_min is not None or self.duration_max is not None:
            lo, hi = self.duration_min, self.duration_max
            parts.append(f"duration {'' if lo is None else f'{lo:g}'}..{'' if hi is None else f'{hi:g}'} s")
        return ", ".join(parts) or "no filter"

    def validated(self, root: str) -> VideoFilter:
        """This filter checked against the collection folder ``root`` (``collection_root``): one
        ``FilterError`` per problem; ``under`` made absolute."""
        for name in ("mtime_min", "mtime_max", "duration_min", "duration_max"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, (int, float)) or not math.isfinite(v)):
                raise FilterError(f"{name.replace('_', ' ')} must be a finite number, got {v!r}")
        for name in ("duration_min", "duration_max"):
            v = getattr(self, name)
            if v is not None and v < 0:
                raise FilterError(f"{name.replace('_', ' ')} must be >= 0 seconds, got {v:g}")
        if self.duration_min is not None and self.duration_max is not None and self.duration_min > self.duration_max:
            raise FilterError(f"impossible duration range: at least {self.duration_min:g} s and at most "
                              f"{self.duration_max:g} s")
        if self.mtime_min is not None and self.mtime_max is not None and self.mtime_min >= self.mtime_max:
            raise FilterError("impossible date range: the start is not before the end")
        root = os.path.abspath(root)
        under = self.under
        if under is not None:
            if not under.strip():
                raise FilterError("--under needs a folder")
            under = os.path.abspath(os.path.expanduser(under))
            if not (_inside(under, root) or _inside(root, under)):
                raise FilterError(f"--under {self.under}: outside the indexed collection ({root})")
        g = self.path_glob
        if g is not None:
            if not g or g.startswith("/") or g.startswith("~") or "\0" in g:
                raise FilterError(f"--path-glob {g!r}: give a glob relative to the collection ({root}), "
                                  "e.g. '*.mp4' or 'kitchen/**'")
            if ".." in g.split("/"):
                raise FilterError(f"--path-glob {g!r}: '..' would leave the collection ({root})")
            _matcher(g)  # parses (an unclosed "[" is taken literally; a reversed range is refused)
        return replace(self, under=under, root=root)

    def matches(self, video: VideoLike) -> bool:
        """Whether ``video`` passes (call on a ``validated`` filter)."""
        if self.duration_min is not None and not video.duration >= self.duration_min:
            return False
        if self.duration_max is not None and not video.duration <= self.duration_max:
            return False
        if self.mtime_min is not None and not video.mtime >= self.mtime_min:
            return False
        if self.mtime_max is not None and not video.mtime < self.mtime_max:
            return False
        path = os.path.abspath(video.path)
        if self.under is not None and not _inside(path, self.under):
            return False
        if self.path_glob is not None:
            if "/" in self.path_glob:
                root = self.root or collection_root([path])
                if not _inside(path, root):
                    return False
                target = os.path.relpath(path, root).replace(os.sep, "/")
            else:
                target = os.path.basename(path)
            if not _matcher(self.path_glob).match(target):
                return False
        return True


_CACHE: dict[str, GlobMatcher] = {}


def _matcher(glob: str) -> GlobMatcher:
    rx = _CACHE.get(glob)
    if rx is None:
        if len(_CACHE) > 256:
            _CACHE.clear()
        rx = _CACHE[glob] = glob_matcher(glob)
    return rx


def select_videos(videos: Sequence[V], filt: VideoFilter) -> list[V]:
    """The videos that pass ``filt`` (validated here against the collection of ``videos``)."""
    if filt.is_empty:
        return list(videos)
    f = filt if filt.root is not None else filt.validated(collection_root(v.path for v in videos))
    return [v for v in videos if f.matches(v)]


def require_matches(videos: Sequence[V], filt: VideoFilter) -> list[V]:
    """``select_videos``, or ``NoVideoMatchesError`` ("no indexed video matches ...") when none pass."""
    got = select_videos(videos, filt)
    if not got:
        raise NoVideoMatchesError(f"no indexed video matches the filter ({filt.describe()}) "
                                  f"among {plural(len(videos), 'video')}")
    return got
