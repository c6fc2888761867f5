"""Where a registry entry's files can be had: the user's mirrors, then the registry's sources.

A *mirror entry* is one line of text:

- one URL or path: a folder holding both files under their registry names
  (``https://example.org/milnce/`` serves ``.../s3d_howto100m.pth`` and ``.../s3d_dict.npy``);
- two URLs or paths separated by spaces: the weights file, then the word list (for hosts whose
  file addresses are not names in a folder, e.g. Google Drive).

Google Drive page addresses (``https://drive.google.com/file/d/ID/view``) become their download
addresses; the download follows Drive's "too large to scan" confirmation page. A plain path
(``/mnt/share/milnce``) becomes a ``file:`` URL.

Sources are tried in this order: ``$MILNCE_MIRRORS`` (entries separated by ``;`` or new lines),
``$MILNCE_HOME/mirrors.txt`` (one entry per line, ``#`` comments), the registry's ``url`` /
``vocab_url``, then the registry's ``mirrors``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

from .cache import cache_dir
from .errors import UsageError
from .listfiles import MAX_PATH_LINE, read_lines
from .printable import show_path
from .weights import WeightsInfo

__all__ = ["MIRRORS_ENV", "MIRRORS_FILE", "Source", "parse_entry", "user_entries", "sources", "download_url",
           "confirm_url", "MirrorError"]

MIRRORS_ENV = "MILNCE_MIRRORS"
MIRRORS_FILE = "mirrors.txt"

_DRIVE_PAGE = re.compile(r"https?://drive\.google\.com/file/d/([A-Za-z0-9_-]+)")


MAX_MIRRORS = 10_000  # entries in one mirror list


class MirrorError(UsageError):
    """A mirror entry that is not one or two URLs/paths."""


@dataclass(frozen=True)
class Source:
    """One place to get both files of a registry entry; ``origin`` says who listed it."""

    weights_url: str
    vocab_url: str
    origin: str

    def url_for(self, info: WeightsInfo, filename: str) -> str:
        return self.vocab_url if filename == info.vocab_filename else self.weights_url


def download_url(url: str) -> str:
    """The address that serves the file itself: a Google Drive page address becomes Drive's
    download address (``/uc?export=download&id=ID``); a plain path becomes a ``file:`` URL."""
    m = _DRIVE_PAGE.match(url)
    if m:
        return f"https://drive.google.com/uc?export=download&id={m.group(1)}"
    parts = urlsplit(url)
    if parts.netloc == "drive.google.com" and parts.path == "/open":
        ids = parse_qs(parts.query).get("id")
        if ids:
            return f"https://drive.google.com/uc?export=download&id={ids[0]}"
    if "://" not in url and not url.startswith("file:"):
        return Path(url).expanduser().absolute().as_uri()
    return url


def _folder_url(base: str) -> str:
    base = download_url(base)
    return base if base.endswith("/") else base + "/"


def parse_entry(entry: str, info: WeightsInfo, origin: str) -> Source:
    """A mirror entry (one folder, or weights + word list) as a ``Source`` for ``info``."""
    parts = entry.split()
    if len(parts) == 1:
        base = _folder_url(parts[0])
        return Source(base + info.filename, base + info.vocab_filename, origin)
    if len(parts) == 2:
        return Source(download_url(parts[0]), download_url(parts[1]), origin)
    raise MirrorError(f"{origin}: mirror entry {entry!r} is not one folder URL or two file URLs "
                      "(weights, then word list)")


def _split_env(value: str) -> list[str]:
    return [e.strip() for e in re.split(r"[;\n]", value) if e.strip()]


def _file_entries(path: Path) -> list[str]:
    if not os.path.exists(path):
        return []
    lines = read_lines(path, f"the mirror list {show_path(str(path))}", what="not a list of weights mirrors, one a line",
                       max_line=MAX_PATH_LINE, max_entries=MAX_MIRRORS, encoding="utf-8", error=MirrorError,
                       comments=False)
    return [e for e in (line.split("#", 1)[0].strip() for line in lines) if e]


def user_entries() -> list[tuple[str, str]]:
    """``(entry, origin)`` of the user's mirrors: ``$MILNCE_MIRRORS``, then ``mirrors.txt``."""
    found = [(e, f"${MIRRORS_ENV}") for e in _split_env(os.environ.get(MIRRORS_ENV, ""))]
    path = cache_dir() / MIRRORS_FILE
    found += [(e, str(path)) for e in _file_entries(path)]
    return found


def sources(info: WeightsInfo) -> list[Source]:
    """Every source of ``info``'s two files, in the order they are tried (no duplicates)."""
    out = [parse_entry(e, info, origin) for e, origin in user_entries()]
    if info.url:
        out.append(Source(download_url(info.url), download_url(info.vocab_url), "registry"))
    out += [parse_entry(e, info, "registry mirror") for e in info.mirrors]
    seen: set[tuple[str, str]] = set()
    unique = []
    for s in out:
        if (s.weights_url, s.vocab_url) not in seen:
            seen.add((s.weights_url, s.vocab_url))
            unique.append(s)
    return unique


class _ConfirmPage(HTMLParser):
    """Collects a page's forms (action + hidden inputs) and links that carry a ``confirm=`` token."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[tuple[str, list[tuple[str, str]]]] = []
        self.links: list[str] = []
        self._form: tuple[str, list[tuple[str, str]]] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self._form = (a.get("action", ""), [])
            self.forms.append(self._form)
        elif tag == "input" and self._form is not None and a.get("name") and a.get("type", "text") == "hidden":
            self._form[1].append((a["name"], a.get("value", "")))
        elif tag == "a" and "confirm=" in a.get("href", ""):
            self.links.append(a["href"])

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._form = None


def confirm_url(page: str, base_url: str) -> str | None:
    """The address a Google Drive "can't scan this file for viruses" page asks to confirm (its form's
    action with the hidden ``id``/``export``/``confirm``/``uuid`` fields, or a ``confirm=`` link),
    resolved against ``base_url``; None when the page has no such confirmation (an error page)."""
    parser = _ConfirmPage()
    try:
        parser.feed(page)
        parser.close()
    except Exception:  # noqa: BLE001 - a malformed page is just a page without a confirmation
        return None
    for action, fields in parser.forms:
        if any(name == "confirm" for name, _ in fields):
            target = urljoin(base_url, action or base_url)
            sep = "&" if urlsplit(target).query else "?"
            return _http_only(target + sep + urlencode(fields))
    for href in parser.links:
        return _http_only(urljoin(base_url, href))
    return None


def _http_only(url: str) -> str | None:
    return url if urlsplit(url).scheme in ("http", "https") else None
