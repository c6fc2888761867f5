"""Reaching Milvus: which ``--index`` values name a Milvus collection (``is_milvus_uri``), the
collection name rule, opening a client with one-line errors (``connect``), the window keys and
the two collections' schemas.

A URI is a path ending ``.db`` (Milvus Lite, in this process: one process at a time per file) or
``http(s)://host:port`` (a Milvus standalone or cluster; the token comes from the environment
variable ``MILNCE_MILVUS_TOKEN``, never from the command line, and is never shown).

A collection ``NAME`` is two Milvus collections: ``NAME`` holds the windows (one row per window:
``pk``, ``video``, ``gen``, ``j``, ``start``, ``end``, ``vector``) and ``NAME_videos`` the records
(one row per video, the index's meta row with id 0 and error rows with negative ids; each a JSON
``doc`` beside a 2-d placeholder vector, since every Milvus collection needs one). A window's
primary key is ``video << 40 | gen << 24 | j`` (``window_key``), so a video's windows are fetched
by key and a re-indexed video's windows (a new ``gen``) never collide with the live ones.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from ..errors import MissingFileError, UsageError
from .errors import IndexFolderError
from .layout import user_path

__all__ = ["TOKEN_ENV", "DEFAULT_COLLECTION", "MilvusError", "MilvusLockedError", "is_milvus_uri", "check_collection",
           "show_uri", "connect", "disconnect", "quiet_logs", "window_key", "key_parts", "windows_schema", "records_schema", "records_name",
           "MAX_VIDEO_ID", "MAX_WINDOWS", "check_available"]

TOKEN_ENV = "MILNCE_MILVUS_TOKEN"
DEFAULT_COLLECTION = "milnce"
NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,246}\Z")  # Milvus: [A-Za-z_][A-Za-z0-9_]{0,254}, less "_videos"
MAX_VIDEO_ID = (1 << 23) - 1
MAX_WINDOWS = 1 << 24
GEN_MASK = (1 << 16) - 1
RECORD_DIM = 2  # the records collection's placeholder vector


class MilvusError(IndexFolderError):
    """Milvus cannot be reached or refuses the collection (one line, never the token)."""


class MilvusLockedError(MilvusError):
    """Another process has the Milvus Lite file open."""


def is_milvus_uri(uri: str | os.PathLike[str] | None) -> bool:
    """Whether an ``--index`` value names Milvus (a ``.db`` file or an ``http(s)://`` server)."""
    if uri is None:
        return False
    s = os.fspath(uri)
    return s.endswith(".db") or s.startswith(("http://", "https://"))


def check_collection(name: str) -> str:
    """``name`` if Milvus accepts it as a collection name (ASCII letters, digits, ``_``; not a
    digit first; at most 247 characters, leaving room for ``_videos``), else ``UsageError``."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise UsageError(f"--collection {name!r}: a Milvus collection name is a letter or _ followed by up to 246 "
                         "letters, digits or _")
    return name


def records_name(collection: str) -> str:
    return f"{collection}_videos"


def show_uri(uri: str) -> str:
    """The URI as it may be shown: a server's scheme, host and port only (no user, password or query)."""
    if uri.startswith(("http://", "https://")):
        parts = urlsplit(uri)
        host = parts.hostname or "?"
        return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")
    return uri


def check_available() -> None:
    """``MilvusError`` naming the extra when pymilvus (or Milvus Lite) cannot be imported."""
    try:
        import pymilvus  # noqa: F401
    except ImportError as exc:
        raise MilvusError(f"the Milvus backend needs the milvus extra (pip install 'milnce[milvus]'): {exc}") from None


def _message(exc: BaseException, secret: str | None) -> str:
    text = str(getattr(exc, "message", "") or exc or type(exc).__name__)
    text = " ".join(text.split())[:300]
    return text.replace(secret, "***") if secret else text


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and len(out) < 10:
        out.append(e)
        e = e.__cause__ or e.__context__
    return out


def _refused_credentials(exc: BaseException) -> str | None:
    """The server's words when a gRPC call in ``exc``'s chain ended UNAUTHENTICATED or
    PERMISSION_DENIED (a Milvus server with authentication, given a wrong token: pymilvus reports
    it as "Fail connecting to server", the status is in the chain), else None."""
    for e in _chain(exc):
        code = getattr(e, "code", None)
        if not callable(code):
            continue
        try:
            name = getattr(code(), "name", "")
        except Exception:  # noqa: BLE001 - not a gRPC error after all
            continue
        if name in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
            details = getattr(e, "details", None)
            return f"{name}: {details() if callable(details) else e}"
    return None


@contextlib.contextmanager
def quiet_logs() -> Iterator[None]:
    """Milvus Lite's own log noise off for the block: its traceback before a failed open, and the
    in-process server's error log (and pymilvus's warning) for each iterator (it has no timestamp
    service). Errors still reach the caller as exceptions."""
    loggers = [logging.getLogger(n) for n in ("milvus_lite", "pymilvus", "grpc._server")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


_LITE_USERS: dict[str, int] = {}  # Lite files this process has open, and by how many clients
_LITE_LOCK = threading.Lock()


def _held_elsewhere(path: str) -> bool:
    """Whether another process holds Milvus Lite's lock on the data folder ``path``."""
    try:
        import fcntl

        from milvus_lite import db as lite_db
    except ImportError:  # pragma: no cover - other platforms: Milvus Lite says so itself
        return False
    name = getattr(lite_db, "LOCK_FILENAME", None)
    lock = os.path.join(path, name) if isinstance(name, str) else None
    if lock is None or not os.path.isfile(lock):
        return False
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # (closing drops the probe's lock)
    return False


def connect(uri: str | os.PathLike[str], *, timeout: float = 10.0) -> Any:
    """A ``pymilvus.MilvusClient`` for ``uri``; ``MilvusLockedError`` when another process has the
    Lite file open, ``MilvusError`` (one line) when the server cannot be reached or refuses the token.
    Close it with ``disconnect``."""
    check_available()
    from pymilvus import MilvusClient, MilvusException

    s = os.fspath(uri)
    if not s.startswith(("http://", "https://")):
        path = user_path(s)
        parent = os.path.dirname(path)
        if not os.path.isdir(parent):
            raise MissingFileError(f"no such folder for the Milvus Lite file {s}: {parent}")
        with _LITE_LOCK:
            if not _LITE_USERS.get(path) and _held_elsewhere(path):
                raise MilvusLockedError(f"{s} is open in another process: Milvus Lite allows one process per .db file "
                                        "(stop the other milnce index/serve/migrate, or use a Milvus server)")
            try:
                with quiet_logs():
                    client = MilvusClient(path, timeout=timeout)
            except (MilvusException, OSError, RuntimeError) as exc:
                raise MilvusError(f"cannot open the Milvus Lite file {s}: {_message(exc, None)}") from None
            _LITE_USERS[path] = _LITE_USERS.get(path, 0) + 1
            return client
    token = os.environ.get(TOKEN_ENV) or None
    where = show_uri(s)
    try:
        client = MilvusClient(uri=s, token=token or "", timeout=timeout)
        client.list_collections()
        return client
    except Exception as exc:  # noqa: BLE001 - any client failure is one line here
        refused = _refused_credentials(exc)
        text = _message(exc, token) if refused is None else _message(Exception(refused), token)
        low = text.lower()
        if refused is not None or any(w in low for w in ("auth", "credential", "token", "permission", "password",
                                                         "unauthenticated")):
            raise MilvusError(f"the Milvus server at {where} refused the credentials "
                              f"(the token comes from ${TOKEN_ENV}): {text}") from None
        raise MilvusError(f"cannot reach the Milvus server at {where}: {text}") from None


def disconnect(client: Any, uri: str) -> None:
    """Close a client of ``connect``; the last one of a Lite file stops its in-process server and
    releases the file (another process may open it then)."""
    try:
        client.close()
    except Exception:  # noqa: BLE001
        pass
    if uri.startswith(("http://", "https://")):
        return
    path = user_path(uri)
    with _LITE_LOCK:
        n = _LITE_USERS.get(path, 0) - 1
        if n > 0:
            _LITE_USERS[path] = n
            return
        _LITE_USERS.pop(path, None)
        try:
            from milvus_lite.server_manager import server_manager_instance
        except ImportError:  # pragma: no cover
            return
        server_manager_instance.release_server(path)


def window_key(video: int, gen: int, j: int) -> int:
    """The primary key of window ``j`` of generation ``gen`` of video ``video``."""
    return (int(video) << 40) | ((int(gen) & GEN_MASK) << 24) | int(j)


def key_parts(key: int) -> tuple[int, int, int]:
    """``(video, gen & 0xFFFF, j)`` of a window key."""
    k = int(key)
    return k >> 40, (k >> 24) & GEN_MASK, k & (MAX_WINDOWS - 1)


def windows_schema(dim: int) -> Any:
    from pymilvus import DataType, MilvusClient

    s = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    s.add_field("pk", DataType.INT64, is_primary=True)
    s.add_field("video", DataType.INT64)
    s.add_field("gen", DataType.INT64)
    s.add_field("j", DataType.INT64)
    s.add_field("start", DataType.DOUBLE)
    s.add_field("end", DataType.DOUBLE)
    s.add_field("vector", DataType.FLOAT_VECTOR, dim=int(dim))
    return s


def records_schema() -> Any:
    from pymilvus import DataType, MilvusClient

    s = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    s.add_field("id", DataType.INT64, is_primary=True)
    s.add_field("doc", DataType.VARCHAR, max_length=65535)
    s.add_field("v", DataType.FLOAT_VECTOR, dim=RECORD_DIM)
    return s
