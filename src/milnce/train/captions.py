"""The timed captions of one tar-shard record, in the layouts ``video2dataset`` (1.3.0) writes.

A record's captions come from its ``KEY.json`` when that holds any, else from its ``KEY.txt``:

- **clipped record** (``KEY.json`` has ``clips``: ``[[start, end]]`` of the source video, as
  video2dataset writes for ``captions_are_subtitles: True`` or a ``clip_col``): the clip's own
  subtitles ``clip_subtitles`` (``lines`` is ``{lang: [...]}``), else any
  ``yt_meta_dict.subtitles`` (only the first clip of a video carries them). Their times are the
  source video's: each is moved into clip time (minus the clip's start) and cut to the clip;
  lines wholly outside the clip are dropped.
- **whole video**: ``yt_meta_dict.subtitles[lang]`` as ``[{"start": "HH:MM:SS.fff", "end": ...,
  "lines": [...]}, ...]`` (or directly that list).
- **simple form**: ``KEY.json`` is a list of ``{"start": s, "end": s, "text": ...}`` in seconds.
- ``KEY.txt``: one caption for the whole clip (its span: the first ``min_time`` seconds). A text
  that is a JSON or Python dict (or list) literal, as video2dataset writes a clip's subtitle lines
  (``"{'en': ['add salt']}"``), is read for the lines it holds (bounded, never evaluated as code);
  one that holds none is a bad record, never a caption.

The language is ``en`` when present, else the first one. Anything unusable raises ``BadRecord``.
"""

from __future__ import annotations

import ast
import json
import math
from typing import Any

__all__ = ["BadRecord", "parse_captions", "MAX_LITERAL"]

MAX_LITERAL = 65536  # characters of a .txt dict/list literal read; a longer one is a bad record


class BadRecord(ValueError):
    """A shard record that cannot be used as a training sample."""


Caption = tuple[float, float, str]


def _seconds(v: Any) -> float:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        t = float(v)
    elif isinstance(v, str):
        try:
            parts = [float(p) for p in v.strip().replace(",", ".").split(":")]
        except ValueError:
            raise BadRecord(f"time {v[:40]!r} is not HH:MM:SS.fff or seconds") from None
        if not 1 <= len(parts) <= 3:
            raise BadRecord(f"time {v[:40]!r} is not HH:MM:SS.fff or seconds")
        t = 0.0
        for p in parts:
            t = t * 60 + p
    else:
        raise BadRecord(f"time {str(v)[:40]!r} is not a number")
    if not math.isfinite(t) or t < 0:
        raise BadRecord(f"time {str(v)[:40]!r} must be finite and >= 0")
    return t


def _language(by_lang: dict[Any, Any]) -> Any:
    """``en``'s value when present, else the first language's."""
    return by_lang["en"] if "en" in by_lang else next(iter(by_lang.values()))


def _text(lines: Any) -> str:
    """Caption text from a subtitle's ``lines``: a string, a list of lines, or ``{lang: lines}``."""
    if isinstance(lines, dict):
        lines = _language(lines) if lines else ""
    if isinstance(lines, list):
        return " ".join(str(x) for x in lines if isinstance(x, (str, int, float)))
    return str(lines) if isinstance(lines, (str, int, float)) else ""


def _subtitles(entries: Any) -> list[Caption]:
    if isinstance(entries, dict):  # by language
        entries = _language(entries) if entries else []
    if not isinstance(entries, list):
        return []
    caps = []
    for e in entries:
        if not isinstance(e, dict):
            raise BadRecord("a subtitle entry is not an object")
        caps.append((_seconds(e.get("start")), _seconds(e.get("end")), _text(e.get("lines", e.get("line", "")))))
    return caps


def _clip_span(meta: dict[str, Any]) -> tuple[float, float]:
    clips = meta.get("clips")
    if not (isinstance(clips, list) and len(clips) == 1 and isinstance(clips[0], (list, tuple)) and len(clips[0]) == 2):
        raise BadRecord("clips must be one [start, end] pair (the clip's span in its source video)")
    start, end = _seconds(clips[0][0]), _seconds(clips[0][1])
    if end <= start:
        raise BadRecord(f"the clip ends ({end:g} s) before it starts ({start:g} s)")
    return start, end


def _in_clip(caps: list[Caption], start: float, end: float) -> list[Caption]:
    """Source-video captions moved into clip time and cut to the clip."""
    out = []
    for s, e, text in caps:
        if e < s:
            raise BadRecord(f"a caption ends ({e:g} s) before it starts ({s:g} s)")
        if e > start and s < end or s == e and start <= s <= end:
            out.append((max(s, start) - start, min(e, end) - start, text))
    return out


def _from_json(meta: Any) -> list[Caption]:
    if isinstance(meta, list):
        caps = []
        for e in meta:
            if not isinstance(e, dict):
                raise BadRecord("a caption entry is not an object")
            caps.append((_seconds(e.get("start")), _seconds(e.get("end")), _text(e.get("text", ""))))
        return caps
    if not isinstance(meta, dict):
        return []
    yt = meta.get("yt_meta_dict")
    whole = _subtitles(yt.get("subtitles")) if isinstance(yt, dict) else []
    if "clips" not in meta:
        return whole
    start, end = _clip_span(meta)
    own = meta.get("clip_subtitles")
    return _in_clip(_subtitles(own) if own is not None else whole, start, end)


def _literal(text: str) -> Any:
    """The value of a JSON or Python literal ``text`` (no code runs); ``BadRecord`` if it is none."""
    if len(text) > MAX_LITERAL:
        raise BadRecord(f"the .txt caption is a {len(text)}-character literal (more than {MAX_LITERAL})")
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise BadRecord("the .txt caption looks like a dict but is not a JSON or Python literal") from None


def _from_txt(raw: bytes, min_time: float) -> list[Caption]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRecord("the .txt caption is not UTF-8") from None
    s = text.strip()
    if s[:1] == "{" and s[-1:] == "}" or s[:1] == "[" and s[-1:] == "]":
        try:
            value = _literal(s)
        except BadRecord:
            if s[0] == "{":
                raise
            value = None  # "[Music]": a caption in brackets, not a list
        if value is not None:
            text = _text(value)
            if not text.strip():
                raise BadRecord("the .txt caption is a dict or list literal that holds no caption lines")
    return [(0.0, float(min_time), text)]


def parse_captions(record: dict[str, Any], min_time: float) -> list[Caption]:
    """``(start, end, text)`` captions of a shard record, sorted (see the module docstring)."""
    caps: list[Caption] = []
    if "json" in record:
        try:
            meta = json.loads(record["json"])
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise BadRecord(f"{record.get('__key__')}.json is not JSON ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:120] if str(exc) else 'too deeply nested'})") from None
        caps = _from_json(meta)
    if not caps and "txt" in record:
        caps = _from_txt(record["txt"], min_time)
    for s, e, _ in caps:
        if e < s:
            raise BadRecord(f"a caption ends ({e:g} s) before it starts ({s:g} s)")
    caps = [(s, e, " ".join(t.split())) for s, e, t in caps if t.strip()]
    if not caps:
        raise BadRecord("no captions (.json subtitles, caption list or .txt)")
    caps.sort(key=lambda c: (c[0], c[1]))
    return caps
