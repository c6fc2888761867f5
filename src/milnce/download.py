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
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .cache import JsonStore, cache_dir, locked, sha256_file
from .errors import MilnceError
from .printable import show_path
from .text import VocabularyError, load_vocab
from .weights import CheckpointError, WeightsInfo, load_checkpoint

__all__ = ["cache_dir", "DownloadError", "download", "ensure_weights", "verify_cached_file", "CHECKSUMS_FILE"]

CHECKSUMS_FILE = "checksums.json"
_CHUNK = 1 << 16
_USER_AGENT = "milnce-downloader/1 (+python-urllib)"
_OFFLINE_HINT = (
    "the original host has gone down at times; get s3d_howto100m.pth and s3d_dict.npy from a mirror, then "
    "either copy them into the cache folder ($MILNCE_HOME, see `milnce info`) or set MILNCE_WEIGHTS/MILNCE_VOCAB "
    "to their paths (commands that run the model also take --weights/--vocab)"
)


logger = logging.getLogger("milnce.download")


class DownloadError(MilnceError, OSError):
    """A file could not be downloaded, or a cached/downloaded file failed verification."""


class _Transient(Exception):
    """A failure worth retrying (the ``.part`` file is kept and resumed)."""


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
    while True:
        try:
            total = _fetch_once(url, part, expected_size, timeout, progress)
            break
        except _Transient as exc:
            if attempt >= retries:
                tries = f"{attempt + 1} attempt{'s' if attempt else ''}"
                raise DownloadError(
                    f"downloading {url} failed after {tries}: {exc}; run again to resume "
                    f"({_size_of(part):,} bytes kept), or use local files: {_OFFLINE_HINT.split('; ', 1)[1]}"
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
            raise DownloadError(f"not found at URL {url} (HTTP {exc.code}); {_OFFLINE_HINT}") from exc
        if exc.code >= 500 or exc.code in (408, 429):
            raise _Transient(f"HTTP {exc.code} {exc.reason}") from exc
        raise DownloadError(f"cannot download {url}: HTTP {exc.code} {exc.reason}") from exc
    except urllib.error.URLError as exc:
        raise _Transient(f"cannot connect ({exc.reason})") from exc
    except (TimeoutError, ConnectionError, http.client.HTTPException) as exc:
        raise _Transient(_describe(exc, timeout)) from exc

    with response:
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
    url: str,
    size: int,
    check: Callable[[Path, WeightsInfo], None],
    progress: bool,
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

        sources = [url] + [m.rstrip("/") + "/" + filename for m in info.mirrors]
        errors: list[DownloadError] = []
        for src in sources:
            try:
                download(src, path, expected_size=size, progress=progress)
                _validate(path, size, check, info)
            except DownloadError as exc:
                path.unlink(missing_ok=True)  # only ever a file this loop downloaded
                errors.append(exc)
                continue
            _record_checksum(home, filename, _stat_entry(path, sha256_file(path), src))
            return path
        kept = f" (your earlier file is kept as {moved})" if moved else ""
        if len(errors) == 1 and not moved:
            raise errors[0]
        if len(errors) == 1:
            raise DownloadError(f"{errors[0]}{kept}") from errors[0]
        raise DownloadError(f"could not get {filename} from any of {len(sources)} sources: "
                            + "; ".join(str(e) for e in errors) + kept)


def ensure_weights(info: WeightsInfo, *, progress: bool = True) -> tuple[Path, Path]:
    """Make sure ``info``'s weights and word list are in the cache, verified; return both paths.

    Missing files are downloaded (resuming ``.part`` files) and validated; their sha256 goes to
    ``checksums.json``. A cached file that no longer matches its checksum raises
    :class:`DownloadError`.
    """
    try:
        w = _ensure_file(info, info.filename, info.url, info.num_bytes, _check_weights, progress)
        v = _ensure_file(info, info.vocab_filename, info.vocab_url, info.vocab_num_bytes, _check_vocab, progress)
    except OSError as exc:
        if isinstance(exc, MilnceError):
            raise
        raise DownloadError(f"cannot use the cache folder {cache_dir()}: {exc}") from exc
    return w, v
