"""What was said in a video: subtitle cues from sidecar files (``NAME.srt``, ``NAME.vtt``,
``NAME.LANG.srt``, ``NAME.LANG.vtt``) and from text subtitle streams inside the container (mov_text,
subrip, webvtt, ass/ssa through PyAV).

Readers are bounded and forgiving: a sidecar over ``MAX_SUBTITLE_BYTES`` is refused unread, text
that is not UTF-8 is read as cp1252 (else Latin-1) and the encoding is reported, a cue with a
malformed time line or an end before its start is skipped and counted, cues are put in time order
(overlaps are kept), HTML/WebVTT tags (``<i>``, ``<c>``, ``<00:00:01.000>``) and ASS override
blocks (``{\\i1}``) are stripped, and the rolling lines of automatic captions (yt-dlp's auto VTT
repeats each line in the next cue) are dropped, so each spoken line is stored once. A problem with
one subtitle source is a ``SubtitleError`` (one line); the video is indexed without it.
"""

from __future__ import annotations

import html
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

__all__ = ["Cue", "SubtitleTrack", "SubtitleError", "MAX_SUBTITLE_BYTES", "MAX_CUE_CHARS", "SIDECAR_EXTENSIONS",
           "parse_subtitles", "read_sidecar", "find_sidecars", "read_embedded", "clean_text", "decode_text",
           "parse_langs", "lang_wanted", "sidecar_stamp", "ISO639_2"]

MAX_SUBTITLE_BYTES = 16 << 20  # a subtitle file larger than this is not one (a 2-hour film's SRT is ~100 KB)
MAX_CUE_CHARS = 2000  # characters kept of one cue's text
SIDECAR_EXTENSIONS = (".vtt", ".srt")
# Containers tag streams with ISO 639-2 codes; sidecars (yt-dlp) with 639-1: the common ones as 639-1.
ISO639_2 = {"eng": "en", "deu": "de", "ger": "de", "fra": "fr", "fre": "fr", "spa": "es", "ita": "it", "por": "pt",
            "rus": "ru", "jpn": "ja", "zho": "zh", "chi": "zh", "kor": "ko", "nld": "nl", "dut": "nl", "ara": "ar",
            "hin": "hi", "pol": "pl", "tur": "tr", "swe": "sv", "ukr": "uk", "ces": "cs", "cze": "cs", "ell": "el",
            "gre": "el", "heb": "he", "vie": "vi", "ind": "id", "tha": "th", "fin": "fi", "dan": "da", "nor": "no"}
_LANG = re.compile(r"^[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{1,8})*$")
_TIME = re.compile(r"^\s*(?:(\d{1,3}):)?(\d{1,2}):(\d{1,2})(?:[.,](\d{1,3}))?\s*$")
_TAG = re.compile(r"<[^<>]{0,200}>")
_ASS = re.compile(r"\{\\[^{}]{0,500}\}")
_CTRL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b\u2028\u2029\ufeff]")


class SubtitleError(ValueError):
    """A subtitle source that cannot be read (one line, its name included by the caller)."""


class Cue(NamedTuple):
    """One subtitle cue: seconds from the video's start, and its plain text."""

    start: float
    end: float
    text: str


@dataclass
class SubtitleTrack:
    """The cues of one subtitle source: ``source`` (a sidecar's path, or ``"stream:N"``), its
    language (None when unknown), the encoding it was read in and how many cues were skipped."""

    source: str
    lang: str | None
    cues: list[Cue] = field(default_factory=list)
    encoding: str = "utf-8"
    skipped: int = 0


def clean_text(text: str) -> str:
    """A cue's text as plain words: tags and ASS override blocks removed, entities decoded,
    control characters and runs of white space made one space, at most ``MAX_CUE_CHARS``."""
    t = text.replace("\\N", " ").replace("\\n", " ").replace("\\h", " ")
    t = _ASS.sub("", t)
    t = _TAG.sub("", t)
    t = html.unescape(t)
    t = _TAG.sub("", t)  # tags that were escaped as entities are not rendered either
    t = _CTRL.sub(" ", t)
    return " ".join(t.split())[:MAX_CUE_CHARS]


def decode_text(data: bytes) -> tuple[str, str]:
    """Subtitle bytes as text and the encoding used: a BOM's, else UTF-8, else cp1252, else
    Latin-1. NUL bytes outside UTF-16 mean a binary file (``SubtitleError``)."""
    if data.startswith(b"\xef\xbb\xbf"):
        enc = "utf-8-sig"
    elif data.startswith((b"\xff\xfe", b"\xfe\xff")):
        enc = "utf-16"
    else:
        if b"\x00" in data:
            raise SubtitleError("not a subtitle file (binary data)")
        enc = "utf-8"
    for e in (enc, "cp1252", "latin-1") if enc == "utf-8" else (enc,):
        try:
            return data.decode(e), e.replace("-sig", "")
        except UnicodeDecodeError:
            continue
    raise SubtitleError(f"not {enc} text")


def _seconds(s: str) -> float | None:
    m = _TIME.match(s)
    if m is None:
        return None
    h, mi, se, ms = m.groups()
    if int(se) >= 60 or (h is not None and int(mi) >= 60):
        return None
    frac = int(ms.ljust(3, "0")) / 1000.0 if ms else 0.0
    return int(h or 0) * 3600 + int(mi) * 60 + int(se) + frac


def _dedupe_rolling(cues: list[Cue]) -> list[Cue]:
    """Drop the lines a cue repeats from the cue before it (automatic captions roll each line into
    the next cue); a cue left with no line extends the cue before it."""
    out: list[Cue] = []
    prev_lines: list[str] = []
    for c in cues:
        lines = [ln for ln in c.text.split("\n") if ln]
        new = [ln for ln in lines if ln not in prev_lines]
        prev_lines = lines
        if not new:
            if out and c.start <= out[-1].end + 0.05:
                out[-1] = out[-1]._replace(end=max(out[-1].end, c.end))
            continue
        out.append(Cue(c.start, c.end, "\n".join(new)))
    return out


def parse_subtitles(text: str) -> tuple[list[Cue], int]:
    """Cues of SRT or WebVTT text (either decimal mark; BOM, CRLF, cue numbers, VTT headers, NOTE/
    STYLE/REGION blocks and cue settings tolerated), in time order, and the number of cues
    skipped (a malformed time line, an end not after its start, no text)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").lstrip("\ufeff")
    raw: list[Cue] = []
    skipped = 0
    for block in re.split(r"\n[ \t]*\n", text):
        lines = [ln.strip() for ln in block.strip("\n").split("\n")]
        at = next((i for i, ln in enumerate(lines[:3]) if "-->" in ln), None)
        if at is None:
            head = lines[0] if lines else ""
            if head and not head.startswith(("WEBVTT", "NOTE", "STYLE", "REGION", "Kind:", "Language:")) \
                    and not head.isdigit():
                skipped += 1  # text without a time line
            continue
        left, _, right = lines[at].partition("-->")
        start, end = _seconds(left), _seconds(right.split()[0] if right.split() else "")
        body = [clean_text(ln) for ln in lines[at + 1:]]
        body = [b for b in body if b]
        if start is None or end is None or end <= start or not body:
            skipped += 1
            continue
        raw.append(Cue(start, end, "\n".join(body)))
    raw.sort(key=lambda c: (c.start, c.end))
    cues = _dedupe_rolling(raw)
    return [c._replace(text=" ".join(c.text.split("\n"))) for c in cues], skipped


def read_sidecar(path: str, lang: str | None, limit: int = MAX_SUBTITLE_BYTES) -> SubtitleTrack:
    """One sidecar file's cues, reading at most ``limit`` bytes (a larger file is refused)."""
    try:
        with open(path, "rb") as f:
            if not os.path.isfile(path):
                raise SubtitleError("not a regular file")
            data = f.read(limit + 1)
    except OSError as exc:
        raise SubtitleError(f"cannot read: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise SubtitleError(f"larger than {limit >> 20} MiB: not read")
    text, enc = decode_text(data)
    cues, skipped = parse_subtitles(text)
    return SubtitleTrack(path, lang, cues, enc, skipped)


def parse_langs(spec: str | None) -> tuple[str, ...] | None:
    """``--subtitle-langs`` as a tuple of lower-case tags (None: every language); ``none``: none."""
    if spec is None or spec.strip() in ("", "all"):
        return None
    tags = tuple(t.strip().lower().replace("_", "-") for t in spec.split(",") if t.strip())
    for t in tags:
        if t != "none" and not _LANG.match(t):
            raise SubtitleError(f"--subtitle-langs: {t!r} is not a language tag (e.g. en,de,pt-BR)")
    return () if "none" in tags else tags


def lang_wanted(lang: str | None, langs: Sequence[str] | None) -> bool:
    """Whether a track of ``lang`` is taken: every track without a filter; with one, tracks whose
    tag or primary subtag is listed (``en`` takes ``en-US`` and ``en-orig``) and untagged tracks."""
    if langs is None:
        return True
    if not langs:
        return False
    if lang is None:
        return True
    low = lang.lower().replace("_", "-")
    return low in langs or low.split("-")[0] in langs


def find_sidecars(video: str, langs: Sequence[str] | None = None,
                  names: Iterable[str] | None = None) -> list[tuple[str, str | None]]:
    """``(path, language)`` of the sidecar subtitle files of ``video``: ``NAME.vtt``/``NAME.srt``
    (no language) and ``NAME.LANG.vtt``/``.srt`` in its folder, sorted, filtered by ``langs``.
    ``names``: the folder's entries, when the caller has listed it already."""
    folder, base = os.path.split(video)
    stem = os.path.splitext(base)[0]
    if names is None:
        try:
            names = os.listdir(folder or ".")
        except OSError:
            return []
    entries = list(names)
    stems = {os.path.splitext(n)[0] for n in entries if os.path.splitext(n)[1].lower() not in SIDECAR_EXTENSIONS}
    out: list[tuple[str, str | None]] = []
    for n in sorted(entries):
        root, ext = os.path.splitext(n)
        if ext.lower() not in SIDECAR_EXTENSIONS or not (root == stem or root.startswith(stem + ".")):
            continue
        lang = None if root == stem else root[len(stem) + 1:]
        if lang is not None and (not _LANG.match(lang) or root in stems):
            continue  # "clip.part2.srt" belongs to "clip.part2.mp4", not to "clip.mp4"
        if lang_wanted(lang, langs):
            out.append((os.path.join(folder, n), lang))
    return out


def sidecar_stamp(paths: Iterable[str]) -> list[list[Any]]:
    """``[name, size, mtime_ns]`` of each sidecar: what tells a changed subtitle file."""
    out: list[list[Any]] = []
    for p in paths:
        try:
            st = os.stat(p)
            out.append([os.path.basename(p), int(st.st_size), int(st.st_mtime_ns)])
        except OSError:
            out.append([os.path.basename(p), -1, -1])
    return out


TEXT_CODECS = frozenset({"mov_text", "subrip", "srt", "webvtt", "ass", "ssa", "text"})


def read_embedded(path: str, langs: Sequence[str] | None = None,
                  max_bytes: int = MAX_SUBTITLE_BYTES) -> tuple[list[SubtitleTrack], list[str]]:
    """The text subtitle streams inside a video file (PyAV): tracks, and one line per stream that
    could not be read. Times come from each packet's pts and duration in the stream's time base,
    minus the stream's start; the text from the decoded ``.dialogue`` (ASS markup stripped)."""
    import av

    tracks: list[SubtitleTrack] = []
    problems: list[str] = []
    try:
        container = av.open(path)
    except Exception as exc:  # noqa: BLE001 - any PyAV failure: no embedded subtitles from this file
        return [], [f"cannot open for subtitles: {' '.join(str(exc).split())[:200]}"]
    with container:
        for st in container.streams:
            if st.type != "subtitle":
                continue
            codec = getattr(st.codec_context, "name", "") or ""
            if codec not in TEXT_CODECS:
                continue  # bitmap subtitles (dvd, pgs) carry no text
            meta = dict(st.metadata or {})
            lang = meta.get("language") or None
            lang = None if lang in ("und", "unk", "") else ISO639_2.get(str(lang).lower(), lang)
            if not lang_wanted(lang, langs):
                continue
            try:
                tracks.append(_read_stream(container, st, lang, max_bytes))
            except Exception as exc:  # noqa: BLE001 - a stream that fails to decode: reported, video kept
                problems.append(f"subtitle stream {st.index} ({codec}) could not be decoded: "
                                f"{' '.join(str(exc).split())[:200]}")
    return tracks, problems


def _read_stream(container: Any, st: Any, lang: str | None, max_bytes: int) -> SubtitleTrack:
    tb = float(st.time_base) if st.time_base else 1e-6
    origin = (st.start_time or 0) * tb
    raw: list[Cue] = []
    total = 0
    skipped = 0
    container.seek(0)
    for pkt in container.demux(st):
        if pkt.size == 0 or pkt.pts is None:
            continue
        total += pkt.size
        if total > max_bytes:
            raise SubtitleError(f"more than {max_bytes >> 20} MiB of text")
        start = pkt.pts * tb - origin
        end = start + (pkt.duration or 0) * tb
        parts: list[str] = []
        for sub in pkt.decode():
            for item in (sub if hasattr(sub, "__iter__") and not hasattr(sub, "dialogue") else [sub]):
                d = getattr(item, "dialogue", b"") or getattr(item, "text", b"") or b""
                s = d.decode("utf-8", "replace") if isinstance(d, bytes) else str(d)
                s = s.split(",", 8)[8] if s.count(",") >= 8 and s.split(",", 1)[0].isdigit() else s
                parts.append(clean_text(s))
        text = " ".join(p for p in parts if p)
        if not text:
            continue
        if end <= start or start < 0:
            skipped += 1
            continue
        raw.append(Cue(start, end, text))
    raw.sort(key=lambda c: (c.start, c.end))
    return SubtitleTrack(f"stream:{st.index}", lang, _dedupe_rolling(raw), "utf-8", skipped)
