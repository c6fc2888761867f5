"""``MilvusIndex``: an index kept in a Milvus collection (Milvus Lite ``.db`` file or a server),
with the reading and writing methods of ``milnce.index.Index`` that the commands, ``build_index``
and the server use, and the same answers (``milnce.index.milvus_query``).

Where things live (``milnce.index.milvus_client``): windows in the collection ``NAME``, video
records, errors and the index's meta (weights id and source, window settings, collection roots,
dimension, counters) as JSON documents in ``NAME_videos``: a small collection read whole at open
(one row per video, not per window), so filters are checked exactly here and records never
disagree with each other.

Milvus has no transactions, so a video is replaced in three steps that each leave a consistent
view: (1) its new windows are written under a new generation (keys never collide with the live
ones; leftovers of an interrupted earlier attempt are deleted first), (2) its record is upserted
with that generation: the one switch searches see, since candidates of another generation are
dropped, (3) the old generation's windows are deleted. Removing deletes the record first.
"""

from __future__ import annotations

import json
import math
import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import UsageError
from ..protocols import Encoder
from ..windows import WindowSettings
from .errors import IndexFolderError, IndexMismatchError, IndexNotFoundError
from .layout import DIM, norm_path, now, user_path
from .milvus_client import (
    DEFAULT_COLLECTION,
    MAX_VIDEO_ID,
    MAX_WINDOWS,
    RECORD_DIM,
    MilvusError,
    check_collection,
    connect,
    disconnect,
    is_milvus_uri,
    quiet_logs,
    records_name,
    records_schema,
    show_uri,
    window_key,
    windows_schema,
)
from .milvus_query import MilvusQueryMixin, MilvusState
from .records import VideoRow, VideoWindowsLike
from .verify import check_settings

__all__ = ["MilvusIndex", "FORMAT", "INSERT_BATCH"]

FORMAT = "milnce-milvus-1"
INSERT_BATCH = 2000  # windows per upsert (Milvus Lite: ~4,400 windows/s here)
ZERO = [0.0] * RECORD_DIM


class MilvusIndex(MilvusQueryMixin):
    """An index in a Milvus collection (``open``, ``create``, ``create_for`` as ``Index``'s)."""

    def __init__(self, client: Any, uri: str, collection: str, model: Encoder | None = None, *,
                 readonly: bool = True) -> None:
        self._client = client
        self.uri = uri
        self.collection = collection
        self.records_collection = records_name(collection)
        self.directory = show_uri(uri) if uri.startswith(("http://", "https://")) else user_path(uri)
        self.model = model
        self.readonly = readonly
        self._lock = threading.RLock()
        self._state: MilvusState | None = None
        for name in (self.records_collection, collection):
            client.load_collection(name)  # a collection opened in an earlier process starts released
        self._load()

    # -- opening ------------------------------------------------------------------------------

    @classmethod
    def _connect(cls, uri: str | os.PathLike[str], collection: str) -> tuple[Any, str]:
        if not is_milvus_uri(uri):
            raise UsageError(f"{os.fspath(uri)} is not a Milvus URI (a path ending .db or http(s)://host:port)")
        check_collection(collection)
        return connect(uri), os.fspath(uri)

    @classmethod
    def open(cls, uri: str | os.PathLike[str], model: Encoder | None = None, *, readonly: bool = True,
             collection: str = DEFAULT_COLLECTION) -> MilvusIndex:
        """Open an existing collection (``IndexNotFoundError`` when there is none)."""
        s = os.fspath(uri)
        if is_milvus_uri(s) and not s.startswith(("http://", "https://")) and not os.path.exists(user_path(s)):
            check_collection(collection)
            raise IndexNotFoundError(f"no Milvus Lite file at {s} (build one with: milnce index VIDEOS... --index {s})")
        client, u = cls._connect(uri, collection)
        try:
            if not (client.has_collection(collection) and client.has_collection(records_name(collection))):
                raise IndexNotFoundError(f"no index in collection {collection!r} at {show_uri(u)} (build one with: "
                                         f"milnce index VIDEOS... --index {show_uri(u)} --collection {collection})")
            idx = cls(client, u, collection, model, readonly=readonly)
            if model is not None:
                idx.check_model(model)
        except BaseException:
            disconnect(client, u)
            raise
        return idx

    @classmethod
    def create(cls, uri: str | os.PathLike[str], model: Encoder, window: WindowSettings | None = None, *,
               roots: Sequence[str | os.PathLike[str]] = (), collection: str = DEFAULT_COLLECTION,
               index_type: str = "FLAT") -> MilvusIndex:
        """``Index.create`` for a collection: ``window`` (default: the model's conventions), which an
        existing collection's windows must equal (``IndexMismatchError``)."""
        if window is None:
            window = WindowSettings.for_model(model)
        elif not isinstance(window, WindowSettings):
            raise UsageError(f"window must be a WindowSettings, got {type(window).__name__}")
        idx = cls.create_for(uri, model.weights_id, window, weights_name=getattr(getattr(model, "info", None), "name", None),
                             check=window.to_dict(), roots=roots, collection=collection, index_type=index_type)
        source = getattr(model, "weights_source", None)
        if source and idx.meta.get("weights_source") != source:
            idx._commit_meta(weights_source=source)
        idx.model = model
        return idx

    @classmethod
    def create_for(cls, uri: str | os.PathLike[str], weights_id: str, window: WindowSettings, *,
                   weights_name: str | None = None, check: dict[str, Any] | None = None,
                   roots: Sequence[str | os.PathLike[str]] = (), collection: str = DEFAULT_COLLECTION,
                   index_type: str = "FLAT", dim: int = DIM) -> MilvusIndex:
        """Open a collection for writing, creating it if needed (``Index.create_for``'s checks).
        ``index_type``: the Milvus index of the windows (FLAT: exact; IVF_FLAT; on a server also
        IVF_PQ, DISKANN, HNSW; candidates are re-scored exactly whatever it is)."""
        client, u = cls._connect(uri, collection)
        try:
            rec = records_name(collection)
            if not client.has_collection(rec):
                ip = client.prepare_index_params()
                ip.add_index("v", index_type="FLAT", metric_type="L2")
                client.create_collection(rec, schema=records_schema(), index_params=ip, consistency_level="Strong")
            client.load_collection(rec)
            if not client.get(rec, ids=[0], output_fields=["doc"]):
                meta: dict[str, Any] = {"format": FORMAT, "weights_id": weights_id, "weights_name": weights_name,
                        "settings": window.to_dict(), "dim": int(dim), "roots": [], "version": 1, "next_id": 1,
                        "next_row": 0, "max_norm": 0.0, "index_type": index_type, "created": now()}
                client.upsert(rec, [{"id": 0, "doc": json.dumps(meta), "v": ZERO}])
            if not client.has_collection(collection):
                ip = client.prepare_index_params()
                params = {"nlist": 128} if index_type.startswith("IVF") else {}
                ip.add_index("vector", index_type=index_type, metric_type="IP", params=params)
                client.create_collection(collection, schema=windows_schema(dim), index_params=ip,
                                         consistency_level="Strong")
            idx = cls(client, u, collection, None, readonly=False)
        except BaseException:
            disconnect(client, u)
            raise
        try:
            idx.check_weights(weights_id)
            if check:
                idx.check_settings(check)
            if roots:
                idx.add_roots(roots)
        except BaseException:
            idx.close()
            raise
        return idx

    # -- state ----------------------------------------------------------------------------------

    def _docs(self, filt: str) -> list[tuple[int, dict[str, Any]]]:
        with quiet_logs():
            it = self._client.query_iterator(self.records_collection, batch_size=1000, filter=filt,
                                             output_fields=["id", "doc"])
        out: list[tuple[int, dict[str, Any]]] = []
        try:
            while True:
                page = it.next()
                if not page:
                    break
                out.extend((int(r["id"]), json.loads(r["doc"])) for r in page)
        finally:
            it.close()
        return out

    def _load(self) -> None:
        """Read the meta row and every video record; publish them as the state searches read."""
        with self._lock:
            got = self._client.get(self.records_collection, ids=[0], output_fields=["doc"])
            if not got:
                raise MilvusError(f"collection {self.collection!r} at {show_uri(self.uri)} has no milnce records "
                                  f"({self.records_collection} lacks its meta row): not a milnce index")
            meta = json.loads(got[0]["doc"])
            if meta.get("format") != FORMAT:
                raise MilvusError(f"collection {self.collection!r} at {show_uri(self.uri)} is not a milnce index "
                                  f"(format {meta.get('format')!r})")
            rows: dict[int, VideoRow] = {}
            gens: dict[int, int] = {}
            for vid, d in self._docs("id > 0"):
                rows[vid] = VideoRow(vid, d["path"], int(d["size"]), float(d["mtime"]), d["hash"], float(d["duration"]),
                                     int(d["row_start"]), int(d["num_windows"]))
                gens[vid] = int(d["gen"])
            # a writer interrupted between a record and the meta row: never reuse an id or a row
            meta["next_id"] = max([int(meta.get("next_id", 1))] + [v + 1 for v in rows])
            meta["next_row"] = max([int(meta.get("next_row", 0))] + [r.row_start + r.num_windows for r in rows.values()])
            self._meta: dict[str, Any] = meta
            self._rows = rows
            self._gens = gens
            self._paths = {r.path: r.id for r in rows.values()}
            self._publish()

    def _publish(self) -> None:
        self._state = MilvusState(self._client, self.collection, dict(self._meta), self._rows, self._gens)

    @property
    def snapshot(self) -> MilvusState:  # type: ignore[override]
        """The current records (immutable; a later commit publishes a new one)."""
        assert self._state is not None
        return self._state

    def refresh(self) -> bool:
        """Reload if another process committed changes; returns whether it did."""
        got = self._client.get(self.records_collection, ids=[0], output_fields=["doc"])
        if got and json.loads(got[0]["doc"]).get("version") != self._meta.get("version"):
            self._load()
            return True
        return False

    @property
    def meta(self) -> dict[str, Any]:
        return self._meta

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self._meta["settings"])

    @property
    def weights_id(self) -> str:
        return str(self._meta["weights_id"])

    @property
    def dim(self) -> int:
        return int(self._meta.get("dim", DIM))

    @property
    def num_live(self) -> int:
        return self.snapshot.num_live

    num_rows = num_live  # no dead rows to compact: Milvus reclaims deleted windows itself
    generation = 0

    @property
    def roots(self) -> list[str]:
        return list(self._meta.get("roots") or [])

    @property
    def num_videos(self) -> int:
        return len(self.snapshot.records)

    def __len__(self) -> int:
        return self.num_live

    def __enter__(self) -> MilvusIndex:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Close the client (the last one of a Lite file releases the file for other processes)."""
        client, self._client = self._client, None
        if client is not None:
            disconnect(client, self.uri)

    def __repr__(self) -> str:
        return (f"MilvusIndex({show_uri(self.uri)!r}, collection {self.collection!r}, {len(self._rows)} videos, "
                f"{self.num_live} windows, weights {self.weights_id})")

    def check_model(self, model: Encoder) -> None:
        self.check_weights(getattr(model, "weights_id", None))

    def check_weights(self, wid: str | None) -> None:
        if wid != self.weights_id:
            raise IndexMismatchError(
                f"collection {self.collection!r} at {show_uri(self.uri)} was built with other weights (id "
                f"{self.weights_id}) than the ones loaded (id {wid}); its scores would be meaningless. Load the same "
                "--weights, or use another --collection")

    def check_settings(self, settings: dict[str, Any]) -> None:
        check_settings(f"{show_uri(self.uri)} (collection {self.collection})", self.settings, settings)

    # -- records ----------------------------------------------------------------------------------

    def video_id_of(self, path: str | os.PathLike[str]) -> int | None:
        return self._paths.get(norm_path(path))

    def row(self, video_id: int) -> VideoRow:
        return self._rows[int(video_id)]

    def has_row(self, video_id: int) -> bool:
        return int(video_id) in self._rows

    def rows(self) -> list[VideoRow]:
        return list(self._rows.values())

    def generation_of(self, video_id: int) -> int:
        """The live generation of a video's windows."""
        return self._gens[int(video_id)]

    def live_mask(self) -> None:
        return None

    def ann(self) -> None:
        return None

    def ann_status(self) -> dict[str, Any]:
        return {"state": "not built", "file": None, "kind": f"milvus {self._meta.get('index_type', 'FLAT')}",
                "rows": self.num_live, "nprobe": None, "recall_at_10": None,
                "reason": "Milvus proposes candidates; every score is re-computed exactly"}

    def errors(self) -> list[tuple[str, str]]:
        return sorted((d["path"], d["reason"]) for _, d in self._docs("id < 0"))

    def error_entry(self, path: str) -> tuple[int | None, float | None] | None:
        got = self._client.get(self.records_collection, ids=[_error_id(norm_path(path))], output_fields=["doc"])
        if not got:
            return None
        d = json.loads(got[0]["doc"])
        return d.get("size"), d.get("mtime")

    # -- writing ----------------------------------------------------------------------------------

    def _need_writer(self) -> None:
        if self.readonly:
            raise IndexFolderError("the index is open read-only")

    def _commit_meta(self, **changes: Any) -> None:
        with self._lock:
            meta = {**self._meta, **changes, "version": int(self._meta.get("version", 0)) + 1}
            self._client.upsert(self.records_collection, [{"id": 0, "doc": json.dumps(meta), "v": ZERO}])
            self._meta = meta
            self._publish()

    def add_roots(self, roots: Sequence[str | os.PathLike[str]]) -> None:
        self._need_writer()
        have = self.roots
        new = [r for r in (user_path(x) for x in roots) if r not in have]
        if new:
            self._commit_meta(roots=have + new)

    def add_video(self, path: str, emb: VideoWindowsLike, *, size: int, mtime: float, content_hash: str) -> int:
        return self.add_videos([(path, emb, size, mtime, content_hash)])[0]

    def write_transcript(self, path: str, tracks: Sequence[Any], stamp: Any) -> None:
        """Subtitles are not kept in a collection (searched visually): nothing is written."""

    def add_videos(self, items: Sequence[tuple[str, VideoWindowsLike, int, float, str]], *,
                   ids: Sequence[int] | None = None, transcripts: Mapping[str, Any] | None = None) -> list[int]:
        """Store videos ``(path, embeddings, size, mtime, content_hash)``; each is replaced as one
        switch (see the module docstring). ``ids``: keep these video ids (``migrate``). ``transcripts``
        are not kept (a collection is searched visually)."""
        self._need_writer()
        prepared = []
        for i, (path, emb, size, mtime, content_hash) in enumerate(items):
            vec = np.ascontiguousarray(emb.embeddings, dtype=np.float32)
            if vec.ndim != 2 or vec.shape[1] != self.dim or len(vec) == 0:
                raise ValueError(f"{path}: expected N x {self.dim} embeddings with N >= 1, got {vec.shape}")
            starts, ends = np.asarray(emb.starts, np.float64), np.asarray(emb.ends, np.float64)
            if len(starts) != len(vec) or len(ends) != len(vec):
                raise ValueError(f"{path}: {len(vec)} embeddings but {len(starts)} window times")
            if not (np.isfinite(vec).all() and np.isfinite(starts).all() and np.isfinite(ends).all()):
                raise UsageError(f"{path}: NaN or infinite window times or embeddings; not indexed")
            if len(vec) >= MAX_WINDOWS:
                raise UsageError(f"{path}: {len(vec)} windows, more than a Milvus index keeps per video")
            dur = float(emb.duration)
            prepared.append((norm_path(path), vec, starts, ends, int(size), float(mtime), str(content_hash),
                             dur if math.isfinite(dur) else float(ends[-1]), None if ids is None else int(ids[i])))
        with self._lock:
            return self._replace(prepared)

    def _replace(self, prepared: list[tuple[str, np.ndarray, np.ndarray, np.ndarray, int, float, str, float,
                                            int | None]]) -> list[int]:
        """Steps (1)-(3) of the module docstring for several videos, a few Milvus calls in all."""
        if len({p[0] for p in prepared}) != len(prepared):
            raise ValueError("add_videos: the same path appears twice")
        next_id, next_row = int(self._meta["next_id"]), int(self._meta["next_row"])
        plan: list[tuple[int, int, int | None, int]] = []  # vid, gen, old gen (None: new), row_start
        for path, vec, *_, want in prepared:
            old = self._paths.get(path) if want is None else want
            if old is not None and old in self._rows:
                plan.append((old, self._gens[old] + 1, self._gens[old], next_row))
            else:
                vid = next_id if want is None else want
                if vid > MAX_VIDEO_ID:
                    raise UsageError(f"video id {vid} is past what a Milvus index keys ({MAX_VIDEO_ID})")
                next_id = max(next_id, vid + 1)
                plan.append((vid, 1, None, next_row))
            next_row += len(vec)
        # leftovers of an interrupted attempt: every window of a video but its live generation
        stale = [f"(video == {v} and gen != {o})" if o is not None else f"video == {v}" for v, _, o, _ in plan]
        self._client.delete(self.collection, filter=" or ".join(stale))
        rows: list[dict[str, Any]] = []
        for (vid, gen, _, _), (_, vec, starts, ends, *_) in zip(plan, prepared):  # (1) the new windows
            for j in range(len(vec)):
                rows.append({"pk": window_key(vid, gen, j), "video": vid, "gen": gen, "j": j, "start": float(starts[j]),
                             "end": float(ends[j]), "vector": vec[j]})
                if len(rows) >= INSERT_BATCH:
                    self._client.upsert(self.collection, rows)
                    rows = []
        if rows:
            self._client.upsert(self.collection, rows)
        docs = []
        for (vid, gen, _, row_start), (path, vec, _, _, size, mtime, h, duration, _) in zip(plan, prepared):
            docs.append({"id": vid, "doc": json.dumps({
                "path": path, "size": size, "mtime": mtime, "hash": h, "duration": duration, "row_start": row_start,
                "num_windows": len(vec), "gen": gen, "indexed_at": now()}), "v": ZERO})
        self._client.upsert(self.records_collection, docs)  # (2) the switch: one record row per video
        old_gens = [f"(video == {v} and gen != {g})" for v, g, o, _ in plan if o is not None]
        if old_gens:
            self._client.delete(self.collection, filter=" or ".join(old_gens))  # (3) the old windows
        self._client.delete(self.records_collection, ids=[_error_id(p[0]) for p in prepared])
        norm = self._meta.get("max_norm") or 0.0
        for (vid, gen, _, row_start), (path, vec, _, _, size, mtime, h, duration, _) in zip(plan, prepared):
            prev = self._rows.get(vid)
            if prev is not None and prev.path != path:
                self._paths.pop(prev.path, None)
            self._rows[vid] = VideoRow(vid, path, size, mtime, h, duration, row_start, len(vec))
            self._gens[vid] = gen
            self._paths[path] = vid
            v64 = vec.astype(np.float64)
            norm = max(float(norm), float(np.sqrt(np.einsum("ij,ij->i", v64, v64)).max()))
        self._commit_meta(next_id=next_id, next_row=next_row, max_norm=norm)
        return [p[0] for p in plan]

    def update_video(self, video_id: int, *, path: str | None = None, size: int | None = None,
                     mtime: float | None = None) -> None:
        """Change a record's path (a moved file) or its size/mtime (a touched file)."""
        self._need_writer()
        with self._lock:
            r = self._rows[int(video_id)]
            new = r._replace(path=norm_path(path) if path else r.path, size=r.size if size is None else size,
                             mtime=r.mtime if mtime is None else mtime)
            doc = {"path": new.path, "size": new.size, "mtime": new.mtime, "hash": new.hash, "duration": new.duration,
                   "row_start": new.row_start, "num_windows": new.num_windows, "gen": self._gens[r.id],
                   "indexed_at": now()}
            self._client.upsert(self.records_collection, [{"id": r.id, "doc": json.dumps(doc), "v": ZERO}])
            del self._paths[r.path]
            self._rows[r.id] = new
            self._paths[new.path] = r.id
            self._commit_meta()

    def remove_videos(self, video_ids: Iterable[int]) -> None:
        """Remove videos by id: records first (gone from searches), then their windows."""
        self._need_writer()
        ids = [int(v) for v in video_ids if int(v) in self._rows]
        if not ids:
            return
        with self._lock:
            self._client.delete(self.records_collection, ids=ids)
            self._client.delete(self.collection, filter=f"video in {ids}")
            for v in ids:
                r = self._rows.pop(v)
                self._gens.pop(v, None)
                self._paths.pop(r.path, None)
            self._commit_meta()

    def remove_paths(self, paths: Iterable[str | os.PathLike[str]]) -> list[str]:
        """``Index.remove_paths``: files, or folders (every indexed video under them)."""
        self._need_writer()
        ids: dict[int, None] = {}
        for p in paths:
            ap = user_path(p)
            vid = self._paths.get(ap)
            if vid is not None:
                ids[vid] = None
                continue
            under = [v for path, v in self._paths.items() if path.startswith(ap.rstrip(os.sep) + os.sep)]
            if not under:
                raise KeyError(f"{os.fspath(p)} is not in the index")
            ids.update(dict.fromkeys(under))
        removed = [self._rows[v].path for v in ids]
        self.remove_videos(list(ids))
        return removed

    def record_error(self, path: str, reason: str, size: int | None, mtime: float | None) -> None:
        self._need_writer()
        path = norm_path(path)
        doc = {"path": path, "size": size, "mtime": mtime, "reason": reason, "time": now()}
        self._client.upsert(self.records_collection, [{"id": _error_id(path), "doc": json.dumps(doc), "v": ZERO}])

    def log_error(self, path: str, reason: str) -> None:
        """Unreadable folders are reported by the caller; a collection keeps only video errors."""

    def record_weights_source(self, source: dict[str, Any]) -> None:
        """Record where the weights can be loaded again (``milnce.index.source``)."""
        self._need_writer()
        self._commit_meta(weights_source=source)

    def count_windows(self) -> int:
        """Windows in the collection, live or not (a check: equal to ``num_live`` when clean)."""
        got = self._client.query(self.collection, filter="", output_fields=["count(*)"])
        return int(got[0]["count(*)"])

    def window_keys(self) -> list[int]:
        """Every window key in the collection (a full pass: for checks)."""
        with quiet_logs():
            it = self._client.query_iterator(self.collection, batch_size=4000, filter="pk >= 0", output_fields=["pk"])
        out: list[int] = []
        try:
            while page := it.next():
                out.extend(int(r["pk"]) for r in page)
        finally:
            it.close()
        return out

    def delete_windows(self, keys: Sequence[int]) -> None:
        """Delete windows by key (windows no live record refers to)."""
        self._need_writer()
        for a in range(0, len(keys), 4000):
            self._client.delete(self.collection, ids=list(keys[a:a + 4000]))

    def compact(self) -> bool:
        return False  # Milvus compacts deleted windows itself

    def build_ann(self, **_: Any) -> dict[str, Any]:
        return {"skipped": True, "windows": self.num_live,
                "reason": f"a Milvus collection has its own index ({self._meta.get('index_type', 'FLAT')})"}


def _error_id(path: str) -> int:
    """The records row of an unreadable video (negative ids, from the path)."""
    import hashlib

    return -(int.from_bytes(hashlib.sha256(path.encode("utf-8", "surrogateescape")).digest()[:7], "big") + 1)
