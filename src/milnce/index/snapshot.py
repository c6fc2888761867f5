"""An index as of one commit: ``Snapshot`` (immutable records, row ranges, memory maps, the ANN
handle) that searches, moments, curves and the ANN index read through its public members.

``milnce.index.writer.Index`` is the one writer: every commit it makes (and every ``refresh`` that
sees another process's commit) publishes a new ``Snapshot``; a search takes the current one at
its start and reads only it, so a concurrent commit never changes what a running search sees.
Derived data (row ranges, memory maps, int8 codes, the live mask, the ANN index) is computed
lazily, once per snapshot (``memo``).

Before each scan of the memory maps, ``check_files`` compares the mapped files' sizes (``fstat``
of descriptors kept open) with the committed rows: a file truncated under a running server gives
an ``IndexDamagedError`` instead of a SIGBUS when the scan touches the missing pages.
"""

from __future__ import annotations

import logging
import mmap
import os
import threading
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, TypeVar

import numpy as np

from .ann import cross_check, open_ann
from .errors import IndexDamagedError, IndexFolderError
from .layout import DIM, EXT, SCAN_BLOCK
from .records import VideoRow

log = logging.getLogger("milnce.index")

__all__ = ["Snapshot", "row_width", "store_path"]

T = TypeVar("T")


def store_path(directory: str, kind: str, generation: int) -> str:
    """The file of one kind of store rows (``vectors``, ``times``, ``codes``, ``aux``) of a generation."""
    return os.path.join(directory, f"{kind}-{generation}.{EXT[kind]}")


def row_width(kind: str, dim: int = DIM) -> int:
    """Bytes per row of a store file."""
    return {"vectors": dim * 4, "times": 16, "codes": dim, "aux": 12}[kind]


class Snapshot:
    """One committed state of an index folder (read-only; thread-safe)."""

    def __init__(self, directory: str, meta: dict[str, Any], rows: Mapping[int, VideoRow],
                 previous: Snapshot | None = None) -> None:
        self.directory = directory
        self.meta: Mapping[str, Any] = MappingProxyType(dict(meta))
        self.settings: dict[str, Any] = dict(meta["settings"])
        self.weights_id: str = meta["weights_id"]
        self.dim = int(meta.get("dim", DIM))
        self.num_rows = int(meta["num_rows"])
        self.generation = int(meta["generation"])
        self.version = meta.get("version", 0)
        self.records: Mapping[int, VideoRow] = MappingProxyType(dict(rows))
        self.by_path: Mapping[str, int] = MappingProxyType({r.path: r.id for r in rows.values()})
        self.num_live = sum(int(r.num_windows) for r in rows.values())
        self._lock = threading.RLock()
        self._memo: dict[str, Any] = {}
        self._fds: dict[str, int] = {}
        if previous is not None and previous._same_ann(self):  # keep the loaded ANN index
            with previous._lock:
                if "ann" in previous._memo:
                    self._memo["ann"] = previous._memo["ann"]

    # -- derived data, once per snapshot ------------------------------------------------------

    def memo(self, key: str, compute: Callable[[], T]) -> T:
        """``compute()``, computed once per snapshot under ``key`` (for data derived from the rows)."""
        got = self._memo.get(key, self._memo)
        if got is not self._memo:
            return got  # type: ignore[no-any-return]
        with self._lock:
            if key not in self._memo:
                self._memo[key] = compute()
            return self._memo[key]  # type: ignore[no-any-return]

    def ranges(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Live row ranges sorted by start: ``(row_start, row_end, video_id)``."""

        def compute() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            recs = sorted(self.records.values(), key=lambda r: r.row_start)
            rs = np.array([r.row_start for r in recs], dtype=np.int64)
            rc = np.array([r.num_windows for r in recs], dtype=np.int64)
            return rs, rs + rc, np.array([r.id for r in recs], dtype=np.int64)

        return self.memo("ranges", compute)

    def path(self, kind: str) -> str:
        return store_path(self.directory, kind, self.generation)

    @property
    def vectors(self) -> np.ndarray:
        """The committed window embeddings (memory map, N x dim float32; dead rows included)."""
        return self.memo("maps", self._map)[0]

    @property
    def times(self) -> np.ndarray:
        """The committed window start/end seconds (memory map, N x 2 float64)."""
        return self.memo("maps", self._map)[1]

    def _open_fd(self, kind: str) -> int:
        fd = os.open(self.path(kind), os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        self._fds[kind] = fd
        return fd

    def _map(self) -> tuple[np.ndarray, np.ndarray]:
        rows = self.num_rows
        if rows == 0:
            return np.zeros((0, self.dim), np.float32), np.zeros((0, 2), np.float64)
        for kind in ("vectors", "times"):
            p, nbytes = self.path(kind), rows * row_width(kind, self.dim)
            have = os.path.getsize(p) if os.path.exists(p) else -1
            if have < nbytes:
                raise IndexFolderError(f"{p}: the vector store is missing or shorter than the committed "
                                       f"{rows} rows ({have} < {nbytes} bytes); the index is damaged")
            self._open_fd(kind)
        v = np.memmap(self.path("vectors"), dtype=np.float32, mode="r", shape=(rows, self.dim))
        t = np.memmap(self.path("times"), dtype=np.float64, mode="r", shape=(rows, 2))
        # Searches read scattered rows of the float32 store (re-scoring): no read-ahead around them.
        mm = getattr(v, "_mmap", None)
        if mm is not None and hasattr(mm, "madvise") and hasattr(mmap, "MADV_RANDOM"):
            try:
                mm.madvise(mmap.MADV_RANDOM)
            except OSError:
                pass
        return v, t

    def codes(self) -> tuple[np.ndarray, np.ndarray] | None:
        """int8 codes (N x dim) and per-row (scale, residual norm, norm) for the screened scan,
        or None when the files are missing or short (the scan then uses the float32 store)."""

        def compute() -> tuple[np.ndarray, np.ndarray] | None:
            n = self.num_rows
            if not n or not all(os.path.exists(self.path(k)) and os.path.getsize(self.path(k)) >= n * row_width(k, self.dim)
                                for k in ("codes", "aux")):
                return None
            self._open_fd("codes")
            self._open_fd("aux")
            return (np.memmap(self.path("codes"), dtype=np.int8, mode="r", shape=(n, self.dim)),
                    np.memmap(self.path("aux"), dtype=np.float32, mode="r", shape=(n, 3)))

        return self.memo("codes", compute)

    def code_stats(self) -> tuple[Any, float, float]:
        """bf16 scales (a torch tensor) and the largest residual norm and norm of the int8 codes."""

        def compute() -> tuple[Any, float, float]:
            import torch

            codes = self.codes()
            assert codes is not None
            aux = np.asarray(codes[1])
            return (torch.from_numpy(np.ascontiguousarray(aux[:, 0])).to(torch.bfloat16),
                    float(aux[:, 1].max()), float(aux[:, 2].max()))

        return self.memo("code_stats", compute)

    def live_mask(self) -> np.ndarray | None:
        """Boolean mask of live rows, or None when every row is live."""
        if self.num_live == self.num_rows:
            return None

        def compute() -> np.ndarray:
            mask = np.zeros(self.num_rows, dtype=bool)
            rs, re_, _ = self.ranges()
            for a, b in zip(rs, re_):
                mask[a:b] = True
            return mask

        return self.memo("live", compute)

    def check_files(self) -> None:
        """Refuse to scan when a mapped file is now shorter than the committed rows (truncated
        under us: touching the missing pages would kill the process with SIGBUS)."""
        for kind, fd in list(self._fds.items()):
            need = self.num_rows * row_width(kind, self.dim)
            try:
                have = os.fstat(fd).st_size
            except OSError:
                continue  # closed: the snapshot was closed
            if have < need:
                raise IndexDamagedError(self.directory, f"{os.path.basename(self.path(kind))} is shorter than the "
                                                        f"committed {self.num_rows} rows ({have} < {need} bytes)")

    def close(self) -> None:
        """Close the descriptors kept for ``check_files`` (the maps close when unreferenced)."""
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            try:
                os.close(fd)
            except OSError:
                pass

    def __del__(self) -> None:
        self.close()

    # -- reading ------------------------------------------------------------------------------

    def position(self, video_id: int) -> int:
        """The position of a video in ``ranges()`` (``KeyError`` for an unknown id)."""
        try:
            vid = int(video_id)
        except (TypeError, ValueError):
            raise KeyError(f"no video with id {video_id!r} in the index") from None
        if vid not in self.records:
            raise KeyError(f"no video with id {video_id!r} in the index")
        return int(np.searchsorted(self.ranges()[0], self.records[vid].row_start, side="right") - 1)

    def positions(self, rows: np.ndarray) -> np.ndarray:
        """The position in ``ranges()`` of each (live) row's video."""
        return np.searchsorted(self.ranges()[0], rows, side="right") - 1

    def windows(self, video_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(starts, ends, embeddings)`` of one video's windows (copies)."""
        r = self.records[int(video_id)]
        a, n = int(r.row_start), int(r.num_windows)
        self.check_files()
        t = np.array(self.times[a:a + n])
        return t[:, 0], t[:, 1], np.array(self.vectors[a:a + n])

    def scores(self, text_emb: np.ndarray, rows: slice | None = None) -> np.ndarray:
        """Exact dot products of text embeddings (Q x dim) with the stored windows (Q x N rows);
        dead rows score -inf."""
        q = np.asarray(text_emb, dtype=np.float32)
        if q.ndim == 1:
            q = q[None]
        a, b = (0, self.num_rows) if rows is None else (rows.start or 0, self.num_rows if rows.stop is None else rows.stop)
        vectors = self.vectors
        self.check_files()
        out = np.empty((len(q), b - a), dtype=np.float32)
        for s in range(a, b, SCAN_BLOCK):
            e = min(b, s + SCAN_BLOCK)
            out[:, s - a:e - a] = q @ vectors[s:e].T
        mask = self.live_mask()
        if mask is not None:
            out[:, ~mask[a:b]] = -np.inf
        return out

    # -- the approximate index ------------------------------------------------------------------

    def _same_ann(self, other: Snapshot) -> bool:
        a, b = self.meta.get("ann"), other.meta.get("ann")
        return bool(a) and bool(b) and a == b and self.generation == other.generation

    def _ann_loaded(self) -> tuple[Any, dict[str, Any]]:
        info = self.meta.get("ann")
        if not info:
            return None, {"state": "not built"}
        return self.memo("ann", lambda: self._ann_checked(dict(info)))

    def _ann_checked(self, info: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        """``open_ann``, then (IVF-PQ) a few stored rows searched through it must find themselves."""
        ix, state = open_ann(self.directory, info, self.generation, self.dim)
        if ix is not None and info.get("format") == "pq":
            mask = self.live_mask()
            n = min(int(info.get("rows", 0)), self.num_rows)
            rows = np.flatnonzero(mask[:n]) if mask is not None else np.arange(n)
            why = cross_check(ix, self.vectors, rows)
            if why is not None:
                log.warning("the ANN index %s is damaged (%s); searching exactly. Rebuild it with: "
                            "milnce index ... --ann pq", info.get("file"), why)
                return None, {**state, "state": "damaged", "reason": why}
        return ix, state

    def ann_damaged(self, reason: str) -> None:
        """A search found the ANN index damaged (``PQDamagedError``): from now on this snapshot
        (and those sharing its ANN index) search exactly and report it damaged; logged once."""
        with self._lock:
            state = self._memo.get("ann", (None, {}))[1]
            if state.get("state") == "damaged":
                return
            state.update(state="damaged", reason=reason)  # the dict later snapshots share
            self._memo["ann"] = (None, state)
        log.warning("the ANN index %s is damaged (%s); searching exactly. Rebuild it with: milnce index ... --ann pq",
                    state.get("file"), reason)

    def ann(self) -> Any:
        """The loaded approximate index (faiss) or None (none built, stale, damaged, or no faiss)."""
        ix = self._ann_loaded()[0]
        return None if ix is None or getattr(ix, "damaged", None) else ix

    def ann_status(self) -> dict[str, Any]:
        """The approximate index's state (see ``milnce.index.ann.open_ann``)."""
        ix, state = self._ann_loaded()
        if ix is not None and getattr(ix, "damaged", None) and state.get("state") != "damaged":
            self.ann_damaged(str(ix.damaged))
        return dict(self._ann_loaded()[1])

    @property
    def ann_rows(self) -> int:
        """Rows the ANN index covers (rows after them are scanned exactly)."""
        info = self.meta.get("ann") or {}
        return int(info.get("rows", 0))
