"""Downloads into the cache: resumable, retried, verified.

The cache folder is ``$MILNCE_HOME`` (default ``~/.cache/milnce``). :func:`download` fetches one
URL with the standard library only: it streams into ``<dest>.part``, resumes that file with an
HTTP ``Range`` request, gives up on a server that sends no data for ``timeout`` seconds, retries
transient failures with exponential backoff and moves the file into place only when complete.

:func:`ensure_weights` makes sure the weights and word list of a registry entry are in the cache:
it downloads what is missing (from ``info.url`` / ``info.vocab_url``, then from each mirror),
validates a fresh file (size, loadable, vocabulary size) and records its sha256 in
``checksums.json``; later calls check the file against that record.

Mirrors (``WeightsInfo.mirrors``) are *base URLs*: folders that hold both files under their
registry file names, e.g. ``https://example.org/milnce/`` serves
``https://example.org/milnce/s3d_howto100m.pth`` and ``.../s3d_dict.npy``. ``file:`` URLs
work too (a shared folder), without resuming.
"""

from __future__ import annotations

import http.client
import logging
import os
import re
import shutil
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .atomic import atomic_file, temp_name
from .cache import JsonStore, cache_dir, locked, sha256_file
from .errors import MilnceError
from .mirrors import Source, confirm_url, download_url, sources
from .printable import show_path
from .text import VocabularyError, load_vocab
from .weights import CheckpointError, WeightsInfo, load_checkpoint

__all__ = ["cache_dir", "DownloadError", "download", "ensure_weights", "install_from", "verify_cached_file",
           "CHECKSUMS_FILE"]

CHECKSUMS_FILE = "checksums.json"
_CHUNK = 1 << 16
_USER_AGENT = "milnce-downloader/1 (+python-urllib)"
_LOCAL_FILES = (
    "list a mirror in MILNCE_MIRRORS or $MILNCE_HOME/mirrors.txt, or "
    "get s3d_howto100m.pth and s3d_dict.npy yourself, then either check them into the cache with "
    "`milnce download --from FILE`, copy them into the cache folder ($MILNCE_HOME, see `milnce info`) or set "
    "MILNCE_WEIGHTS/MILNCE_VOCAB to their paths (commands that run the model also take --weights/--vocab)"
)
_OFFLINE_HINT = "the original host has gone down at times; " + _LOCAL_FILES


logger = logging.getLogger("milnce.download")


class DownloadError(MilnceError, OSError):
    """A file could not be downloaded, or a cached/downloaded file failed verification.

    ``reason`` says what went wrong with this one source, ``advice`` (may be empty) what to do;
    the message is ``reason; advice``. A failure over several sources lists their reasons and
    gives the advice once."""

    def __init__(self, reason: str, advice: str = "") -> None:
        super().__init__(f"{reason}; {advice}" if advice else reason)
        self.reason, self.advice = reason, advice


class _Transient(Exception):
    """A failure worth retrying (the ``.part`` file is kept and resumed)."""


class _Confirm(Exception):
    """The server answered a page that asks to confirm the download; ``url`` confirms it."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.url = url


_MAX_PAGES = 3  # confirmation pages followed per download
_MAX_PAGE_BYTES = 1 << 20  # a confirmation page is a few KB


# --------------------------------------------------------------------------- one URL


def download(
    url: str,
    dest: str | os.PathLike[str],
    *,
    expected_size: int | None = None,
    timeout: float = 30.0,
    retries: int = 3,
    backoff: float = 1.0,
    progress: bool = True,
) -> Path:
    """Download ``url`` to ``dest`` (via ``dest.part``, resumed and retried); return ``dest``.

    ``timeout`` bounds each wait for data; ``retries`` extra attempts follow connection errors,
    timeouts, truncated transfers and 5xx answers, ``backoff * 2**k`` seconds apart.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    attempt = 0
    pages = 0
    while True:
        try:
            total = _fetch_once(url, part, expected_size, timeout, progress)
            break
        except _Confirm as page:  # a web page that asks to confirm the download (Google Drive)
            pages += 1
            if pages > _MAX_PAGES:
                raise DownloadError(f"{url}: the server keeps answering confirmation pages instead of the file") from None
            logger.debug("following the download confirmation of %s", url)
            url = page.url
        except _Transient as exc:
            if attempt >= retries:
                tries = f"{attempt + 1} attempt{'s' if attempt else ''}"
                raise DownloadError(
                    f"downloading {url} failed after {tries}: {exc}",
                    f"run again to resume ({_size_of(part):,} bytes kept), or use local files: {_LOCAL_FILES}",
                ) from exc
            time.sleep(backoff * 2**attempt)
            attempt += 1
    have = _size_of(part)
    want = expected_size if expected_size is not None else total
    if want is not None and have != want:
        part.unlink(missing_ok=True)
        raise DownloadError(f"downloaded {have:,} bytes from {url} but expected {want:,}; removed the partial file")
    os.replace(part, dest)
    return dest


def _size_of(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _fetch_once(url: str, part: Path, expected_size: int | None, timeout: float, progress: bool) -> int | None:
    """One attempt: resume or start ``part``; return the full size when the server told it."""
    have = _size_of(part)
    if expected_size is not None and have > expected_size:
        part.unlink()
        have = 0
    headers = {"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and have:
            total = _range_total(exc.headers.get("Content-Range"))
            known = expected_size if expected_size is not None else total
            if known is not None and have == known:
                return known  # the .part file is already complete
            part.unlink(missing_ok=True)  # cannot resume this .part: start over
            raise _Transient(f"server refused to resume at byte {have:,} (HTTP 416)") from exc
        if exc.code in (404, 403, 410):
            raise DownloadError(f"not found at URL {url} (HTTP {exc.code})", _OFFLINE_HINT) from exc
        if exc.code >= 500 or exc.code in (408, 429):
            raise _Transient(f"HTTP {exc.code} {exc.reason}") from exc
        raise DownloadError(f"cannot download {url}: HTTP {exc.code} {exc.reason}") from exc
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, socket.gaierror):  # no such host: asking again will not help
            raise DownloadError(f"cannot download {url}: its host name does not resolve ({exc.reason})") from exc
        if isinstance(exc.reason, FileNotFoundError):  # a file: URL
            raise DownloadError(f"not found at URL {url}", _OFFLINE_HINT) from exc
        raise _Transient(f"cannot connect ({exc.reason})") from exc
    except (TimeoutError, ConnectionError, http.client.HTTPException) as exc:
        raise _Transient(_describe(exc, timeout)) from exc

    with response:
        if response.headers.get_content_type() == "text/html":  # never one of our files: a page about it
            _answer_page(url, response, timeout)
        status = response.status
        length = response.headers.get("Content-Length")
        remaining = int(length) if length and length.isdigit() else None
        if status == 206:
            start = _range_start(response.headers.get("Content-Range"))
            if start != have:
                part.unlink(missing_ok=True)
                raise _Transient(f"server resumed at byte {start} instead of {have:,}; starting over")
            total = _range_total(response.headers.get("Content-Range"))
            if total is None and remaining is not None:
                total = have + remaining
            mode = "ab"
        else:  # 200: a full body, also when the server ignored our Range header
            have = 0
            total = remaining
            mode = "wb"
        if expected_size is not None and total is not None and total != expected_size:
            raise DownloadError(
                f"the server offers {total:,} bytes at {url} but {expected_size:,} were expected "
                "(a different or changed file?)"
            )
        received = 0
        bar = _progress_bar(total, have, part.name.removesuffix(".part"), progress)
        try:
            with open(part, mode) as f:
                while True:
                    try:
                        block = response.read(_CHUNK)
                    except (TimeoutError, ConnectionError, http.client.HTTPException) as exc:
                        raise _Transient(_describe(exc, timeout)) from exc
                    if not block:
                        break
                    f.write(block)
                    received += len(block)
                    bar.update(len(block))
        finally:
            bar.close()
        if remaining is not None and received < remaining:
            raise _Transient(f"connection closed after {received:,} of {remaining:,} bytes")
    return total


def _answer_page(url: str, response: Any, timeout: float) -> None:
    """A web page instead of the file: raise ``_Confirm`` with the address it asks to confirm
    (Google Drive's page for files too large to scan), else ``DownloadError``."""
    try:
        body = response.read(_MAX_PAGE_BYTES)
    except (TimeoutError, ConnectionError, http.client.HTTPException) as exc:
        raise _Transient(_describe(exc, timeout)) from exc
    charset = response.headers.get_content_charset() or "utf-8"
    target = confirm_url(body.decode(charset, errors="replace"), response.geturl() or url)
    if target is None:
        raise DownloadError(f"{url} answered a web page instead of the file (no access, a download quota "
                            "exceeded, or not a download address)")
    raise _Confirm(target)


def _describe(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"no data for {timeout:g} s (timed out)"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


_CONTENT_RANGE = re.compile(r"bytes\s+(\d+|\*)(?:-(\d+))?/(\d+|\*)")


def _range_start(value: str | None) -> int | None:
    m = _CONTENT_RANGE.match(value or "")
    return int(m.group(1)) if m and m.group(1) != "*" else None


def _range_total(value: str | None) -> int | None:
    m = _CONTENT_RANGE.match(value or "")
    return int(m.group(3)) if m and m.group(3) != "*" else None


def _progress_bar(total: int | None, initial: int, name: str, progress: bool):  # type: ignore[no-untyped-def]
    from tqdm import tqdm

    # disable=None: tqdm turns itself off when stderr is not a terminal
    return tqdm(total=total, initial=initial, desc=show_path(name), unit="B", unit_scale=True, unit_divisor=1024,
                file=sys.stderr, disable=None if progress else True, leave=False)


# --------------------------------------------------------------------------- the cache


def _checksums(home: Path) -> JsonStore:
    return JsonStore(home / CHECKSUMS_FILE)


def _read_checksums(home: Path) -> dict[str, Any]:
    return _checksums(home).read()


def _record_checksum(home: Path, filename: str, entry: dict[str, Any]) -> None:
    """Add ``filename``'s entry to ``checksums.json`` (locked read-modify-write, atomic replace)."""
    _checksums(home).put(filename, entry)


def _stat_entry(path: Path, sha256: str, url: str | None) -> dict[str, Any]:
    st = path.stat()
    entry: dict[str, Any] = {"sha256": sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                             "ctime_ns": st.st_ctime_ns}
    if url:
        entry["url"] = url
    return entry


def _check_weights(path: Path, info: WeightsInfo) -> None:
    try:
        _, spec = load_checkpoint(path)
    except CheckpointError as exc:
        raise DownloadError(f"{path.name} is not a usable {info.name} checkpoint: {exc}") from exc
    if spec.vocab_size != info.vocab_words + 1:
        raise DownloadError(
            f"{path.name} has a word embedding of {spec.vocab_size} rows but {info.name} has "
            f"{info.vocab_words} words + padding: this is the checkpoint of another model"
        )


def _check_vocab(path: Path, info: WeightsInfo) -> None:
    try:
        words = load_vocab(path)
    except VocabularyError as exc:
        raise DownloadError(f"{path.name} is not a usable word list: {exc}") from exc
    if len(words) != info.vocab_words:
        raise DownloadError(f"{path.name} has {len(words):,} words but {info.name} uses {info.vocab_words:,}")


def _validate(path: Path, size: int, check: Callable[[Path, WeightsInfo], None], info: WeightsInfo) -> None:
    have = path.stat().st_size
    if have != size:
        raise DownloadError(f"{path.name} has {have:,} bytes but {info.name} publishes {size:,}")
    check(path, info)


def _verify_recorded(home: Path, path: Path, filename: str) -> bool:
    """Check a cached file against its ``checksums.json`` record: True if it matches (re-hashing only
    when its size, mtime or ctime changed), False if there is no record, DownloadError if it changed."""
    record = _read_checksums(home).get(filename)
    if not isinstance(record, dict) or not record:
        return False
    st = path.stat()
    if (record.get("size"), record.get("mtime_ns"), record.get("ctime_ns")) == (st.st_size, st.st_mtime_ns,
                                                                                 st.st_ctime_ns):
        return True  # unchanged since it was verified (an edit with the mtime put back changes the ctime)
    if "sha256" not in record:
        return False
    digest = sha256_file(path)
    if digest != record["sha256"]:
        raise DownloadError(
            f"the cached file {path} changed since it was {'downloaded' if record.get('url') else 'verified'} "
            f"(sha256 {digest[:12]}… instead of {record['sha256'][:12]}…): it is corrupted or was replaced; "
            "delete it and run `milnce download` again"
        )
    _record_checksum(home, filename, {**record, **_stat_entry(path, digest, None)})
    return True


def verify_cached_file(path: Path) -> None:
    """Check a file of the cache against the sha256 recorded when it was downloaded or first verified
    (re-hashing only when its size, mtime or ctime changed); no record, nothing to check. No download."""
    try:
        _verify_recorded(path.parent, path, path.name)
    except OSError as exc:
        if isinstance(exc, MilnceError):
            raise
        raise DownloadError(f"cannot check the cached file {path}: {exc}") from exc


def _downloaded_by_milnce(home: Path, filename: str) -> bool:
    record = _read_checksums(home).get(filename)
    return bool(record and record.get("url"))


def _move_aside(path: Path) -> Path:
    """Rename a user's file out of the way (never delete it): ``NAME.rejected``, ``NAME.rejected-2``, ..."""
    n = 1
    while True:
        aside = path.with_name(f"{path.name}.rejected" + (f"-{n}" if n > 1 else ""))
        if not aside.exists():
            os.replace(path, aside)
            return aside
        n += 1


def _ensure_file(
    info: WeightsInfo,
    filename: str,
    found: list[Source],
    size: int,
    check: Callable[[Path, WeightsInfo], None],
    progress: bool,
    retries: int,
) -> Path:
    home = cache_dir()
    home.mkdir(parents=True, exist_ok=True)
    path = home / filename
    moved: Path | None = None
    with locked(path):
        if path.exists():
            if _verify_recorded(home, path, filename):
                return path
            try:  # a file put in the cache by hand or an older version: verify it once
                _validate(path, size, check, info)
            except DownloadError as exc:
                if _downloaded_by_milnce(home, filename):
                    logger.warning("%s; downloading it again", exc)
                    path.unlink()
                else:  # the user put it there: keep it
                    moved = _move_aside(path)
                    logger.warning("%s; moved it to %s (milnce never deletes a file it did not download) and "
                                   "downloading it again", exc, moved)
            else:
                _record_checksum(home, filename, _stat_entry(path, sha256_file(path), None))
                return path

        urls = [s.url_for(info, filename) for s in found]
        errors: list[DownloadError] = []
        for src in urls:
            try:
                download(src, path, expected_size=size, progress=progress, retries=retries)
                _validate(path, size, check, info)
            except DownloadError as exc:
                path.unlink(missing_ok=True)  # only ever a file this loop downloaded
                errors.append(exc)
                continue
            digest = sha256_file(path)
            _record_checksum(home, filename, _stat_entry(path, digest, src))
            logger.info("%s: downloaded from %s (sha256 %s)", filename, src, digest)
            return path
        kept = f" (your earlier file is kept as {moved})" if moved else ""
        if len(errors) == 1 and not moved:
            raise errors[0]
        if len(errors) == 1:
            raise DownloadError(errors[0].reason + kept, errors[0].advice) from errors[0]
        raise DownloadError(f"could not get {filename} from any of {len(urls)} sources: "
                            + "; ".join(e.reason for e in errors) + kept, _OFFLINE_HINT)


def ensure_weights(info: WeightsInfo, *, progress: bool = True, retries: int = 3) -> tuple[Path, Path]:
    """Make sure ``info``'s weights and word list are in the cache, verified; return both paths.

    Missing files are downloaded (resuming ``.part`` files) from each source in turn
    (:func:`milnce.mirrors.sources`: ``$MILNCE_MIRRORS``, ``$MILNCE_HOME/mirrors.txt``, the
    registry's URL and mirrors) and validated; their sha256 goes to ``checksums.json`` and one log
    line says which source served them. A cached file that no longer matches its checksum raises
    :class:`DownloadError`. ``retries``: extra attempts per source after a transient failure.
    """
    try:
        found = sources(info)
        w = _ensure_file(info, info.filename, found, info.num_bytes, _check_weights, progress, retries)
        v = _ensure_file(info, info.vocab_filename, found, info.vocab_num_bytes, _check_vocab, progress, retries)
    except OSError as exc:
        if isinstance(exc, MilnceError):
            raise
        raise DownloadError(f"cannot use the cache folder {cache_dir()}: {exc}") from exc
    return w, v


def install_from(info: WeightsInfo, location: str, *, progress: bool = True) -> list[Path]:
    """Check files someone already has the way a download is checked (the registry's byte sizes,
    a pickle-free load, the vocabulary size), then put them into the cache with their sha256.

    ``location``: the weights file or the word list (told apart by their sizes), a folder holding
    both under their registry names, or a URL of one file (a Google Drive page address too).
    Returns the cache paths written."""
    home = cache_dir()
    home.mkdir(parents=True, exist_ok=True)
    if "://" in location:
        return [_install_url(info, home, download_url(location), progress)]
    src = Path(location).expanduser()
    if src.is_dir():
        files = [src / n for n in (info.filename, info.vocab_filename) if (src / n).is_file()]
        if not files:
            raise DownloadError(f"{src}: no {info.filename} or {info.vocab_filename} in that folder")
        return [_install_file(info, home, f) for f in files]
    if not src.is_file():
        raise DownloadError(f"--from {src}: no such file or folder")
    return [_install_file(info, home, src)]


def _which(info: WeightsInfo, path: Path, what: str) -> tuple[str, int, Callable[[Path, WeightsInfo], None]]:
    size = path.stat().st_size
    for filename, want, check in ((info.filename, info.num_bytes, _check_weights),
                                  (info.vocab_filename, info.vocab_num_bytes, _check_vocab)):
        if size == want:
            return filename, want, check
    raise DownloadError(f"{what} has {size:,} bytes: neither {info.name}'s {info.filename} ({info.num_bytes:,} bytes) "
                        f"nor its {info.vocab_filename} ({info.vocab_num_bytes:,} bytes)")


def _install_file(info: WeightsInfo, home: Path, src: Path) -> Path:
    filename, size, check = _which(info, src, str(src))
    _validate(src, size, check, info)
    dest = home / filename
    with locked(dest):
        if src.resolve() != dest.resolve():
            with open(src, "rb") as fin, atomic_file(dest) as fout:
                shutil.copyfileobj(fin, fout, _CHUNK * 16)
        digest = sha256_file(dest)
        _record_checksum(home, filename, {**_stat_entry(dest, digest, None), "from": str(src.absolute())})
    logger.info("%s: checked and copied from %s (sha256 %s)", filename, src, digest)
    return dest


def _install_url(info: WeightsInfo, home: Path, url: str, progress: bool) -> Path:
    tmp = Path(temp_name(home / "from-url.download"))
    try:
        download(url, tmp, progress=progress)
        filename, size, check = _which(info, tmp, f"the file at {url}")
        _validate(tmp, size, check, info)
        dest = home / filename
        with locked(dest):
            os.replace(tmp, dest)
            digest = sha256_file(dest)
            _record_checksum(home, filename, _stat_entry(dest, digest, url))
    finally:
        tmp.unlink(missing_ok=True)
        tmp.with_name(tmp.name + ".part").unlink(missing_ok=True)
    logger.info("%s: downloaded from %s (sha256 %s)", filename, url, digest)
    return dest
