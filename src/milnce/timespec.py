"""Times and video references typed by a user: the one strict parser behind ``milnce clip``,
``milnce search --like`` and the server's ``like=`` parameter.

Grammar (ASCII digits only; ``²``, Arabic-Indic digits, ``1_0``, ``inf`` or exponents are refused):

- a time is ``S`` (seconds, a fraction allowed: ``65``, ``80.5``), ``M:SS`` (``1:05``; the seconds
  below 60) or ``H:MM:SS`` (``1:02:03.5``; minutes and seconds below 60); only the last field takes
  a fraction;
- a span is ``VIDEO@START-END``; a like reference is ``VIDEO`` or ``VIDEO@START``; a clip file is
  ``FILE`` or ``FILE@START-END`` (``milnce search --like-file``);
- ``VIDEO`` is an index's video id (ASCII digits) unless a file of that name exists, else a path.

Every refusal is a ``TimeSpecError`` (a ``UsageError``: one line, exit 2 in the CLI, 422 over HTTP).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable

from .errors import UsageError

__all__ = ["TimeSpecError", "parse_time", "parse_video_id", "parse_span", "parse_like", "parse_like_id",
           "parse_clip_file", "MAX_TIME_CHARS"]

MAX_TIME_CHARS = 32  # "123456789:59:59.999999" fits; longer is not a time anyone typed
_SECONDS = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)\Z", re.ASCII)
_WHOLE = re.compile(r"[0-9]+\Z", re.ASCII)
_ID = re.compile(r"[0-9]{1,18}\Z", re.ASCII)  # 18 digits: below 2**63


class TimeSpecError(UsageError):
    """A time, span or video reference that does not follow the grammar (see the module docstring)."""


def parse_time(text: str, *, clock: bool = True) -> float:
    """Seconds from ``S``, ``M:SS`` or ``H:MM:SS`` (``clock=False``: ``S`` only); ASCII digits,
    a fraction only in the last field, seconds (and minutes after hours) below 60."""
    s = str(text).strip()
    if not s or len(s) > MAX_TIME_CHARS:
        raise TimeSpecError(f"{text!r} is not a time (seconds, M:SS or H:MM:SS)")
    parts = s.split(":")
    if len(parts) > (3 if clock else 1):
        raise TimeSpecError(f"{text!r} is not a time ({'seconds, M:SS or H:MM:SS' if clock else 'seconds'})")
    if not _SECONDS.match(parts[-1]) or not all(_WHOLE.match(p) for p in parts[:-1]):
        raise TimeSpecError(f"{text!r} is not a time (ASCII digits: seconds, M:SS or H:MM:SS)")
    sec = float(parts[-1])
    if len(parts) > 1 and sec >= 60:
        raise TimeSpecError(f"{text!r}: the seconds after a colon must be below 60")
    if len(parts) == 3 and int(parts[1]) >= 60:
        raise TimeSpecError(f"{text!r}: the minutes in H:MM:SS must be below 60")
    whole = [int(p) for p in parts[:-1]]
    return sum(x * 60 ** (len(whole) - i) for i, x in enumerate(whole)) + sec


def parse_video_id(text: str) -> int | None:
    """``text`` as a video id (1 to 18 ASCII digits), or None."""
    return int(text) if _ID.match(text) else None


def _video(text: str, exists: Callable[[str], bool]) -> str | int:
    vid = parse_video_id(text)
    return text if vid is None or exists(text) else vid


def parse_span(spec: str, *, exists: Callable[[str], bool] = os.path.exists) -> tuple[str | int, float, float]:
    """``VIDEO@START-END`` -> (path, or id when VIDEO is ASCII digits and no such file, start, end)."""
    video, at, tail = spec.rpartition("@")
    start_s, dash, end_s = tail.partition("-")
    if not at or not video or not dash:
        raise TimeSpecError(f"{spec}: expected VIDEO@START-END, e.g. 12@65-80 or video.mp4@1:05-1:20")
    try:
        start, end = parse_time(start_s), parse_time(end_s)
    except TimeSpecError as exc:
        raise TimeSpecError(f"{spec}: START and END must be seconds or [H:]M:SS ({exc})") from None
    return _video(video, exists), start, end


def parse_like(spec: str, *, exists: Callable[[str], bool] = os.path.exists) -> tuple[str | int, float]:
    """``VIDEO[@START]`` -> (path or id, seconds); START as seconds or [H:]M:SS. A name holding
    ``@`` that exists as a file is that file."""
    video, start = spec, 0.0
    if "@" in spec and not exists(spec):
        head, _, tail = spec.rpartition("@")
        try:
            start = parse_time(tail)
        except TimeSpecError as exc:
            raise TimeSpecError(f"--like {spec}: START must be seconds or [H:]M:SS ({exc})") from None
        video = head
    return _video(video, exists), start


def parse_clip_file(spec: str, *, exists: Callable[[str], bool] = os.path.exists) -> tuple[str, float | None, float | None]:
    """``FILE[@START-END]`` -> (path, start, end): the whole file (None, None) when no span is
    given or when the whole text names an existing file; START and END as seconds or [H:]M:SS,
    END after START."""
    if "@" not in spec or exists(spec):
        return spec, None, None
    path, _, tail = spec.rpartition("@")
    start_s, dash, end_s = tail.partition("-")
    if not path or not dash:
        raise TimeSpecError(f"--like-file {spec}: expected FILE or FILE@START-END, e.g. clip.mp4@0:05-0:12")
    try:
        start, end = parse_time(start_s), parse_time(end_s)
    except TimeSpecError as exc:
        raise TimeSpecError(f"--like-file {spec}: START and END must be seconds or [H:]M:SS ({exc})") from None
    if not end > start:
        raise TimeSpecError(f"--like-file {spec}: END must be after START")
    return path, start, end


def parse_like_id(value: str) -> tuple[int, float]:
    """The server's ``like``: ``ID`` or ``ID@SECONDS`` (ASCII digits, seconds only) -> (id, seconds)."""
    head, at, tail = str(value).strip().partition("@")
    vid = parse_video_id(head.strip())
    if vid is None:
        raise TimeSpecError(f"like: expected VIDEO_ID or VIDEO_ID@SECONDS (ASCII digits), got {value!r}")
    if not at:
        return vid, 0.0
    try:
        return vid, parse_time(tail, clock=False)
    except TimeSpecError as exc:
        raise TimeSpecError(f"like: expected VIDEO_ID or VIDEO_ID@SECONDS, got {value!r} ({exc})") from None
