"""The optional approximate index (faiss IVF; ``milnce index --ann``): loading it, building it
over the live rows and tuning ``nprobe`` for a target recall@10. Its candidates are always
re-scored exactly from the float32 store."""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from ..atomic import atomic_path, fsync_dir
from ..cache import crc32_file
from .ann_pq import (
    DEFAULT_NPROBE,
    DEFAULT_RERANK,
    META_FILE,
    PQDamagedError,
    PQIndexError,
    build_pq,
    choose_pq_params,
    open_pq,
)
from .errors import IndexFolderError, IndexWriteError
from .layout import SCAN_BLOCK, now


class AnnSource(Protocol):
    """What building the ANN index reads (``milnce.index.snapshot.Snapshot`` provides it)."""

    directory: str
    dim: int
    num_rows: int
    num_live: int
    generation: int

    @property
    def vectors(self) -> np.ndarray: ...
    def live_mask(self) -> np.ndarray | None: ...
    def scores(self, text_emb: np.ndarray, rows: slice | None = None) -> np.ndarray: ...

__all__ = ["open_ann", "build_ann", "cross_check", "is_ann_name", "AnnSource", "ANN_MIN_WINDOWS", "candidates_for"]


ANN_MIN_WINDOWS = 50_000  # below this exact search is fast (a few ms) and an IVF index only loses recall

log = logging.getLogger("milnce.index")



def open_ann(directory: str, info: dict[str, Any], generation: int, dim: int) -> tuple[Any, dict[str, Any]]:
    """The approximate index (faiss) an index records in ``info``, loaded and verified (size,
    CRC-32, vector count and dimension), and its state: ``(index or None, {"state": "ok" | "missing"
    | "damaged" | "stale" | "no faiss", "file", "kind", "rows", "nprobe", "recall_at_10", "reason"}``, and ``"rerank"``
    for IVF-PQ)``.
    Anything but "ok" means searches are exact; a damaged or missing file is reported once, as a
    warning on the ``milnce.index`` logger."""
    ix, state = _open_ann(directory, info, generation, dim)
    if state["state"] in ("damaged", "missing"):
        log.warning("the ANN index %s is %s (%s); searching exactly. Rebuild it with: milnce index ... --ann",
                    info.get("file"), state["state"], state.get("reason"))
    return ix, state


_ANN_NAME = re.compile(r"ann-[0-9]+-[0-9]+\.(faiss|pq)\Z", re.ASCII)


def is_ann_name(name: Any) -> bool:
    """Whether ``name`` is what ``build_ann`` names its file or folder (``ann-<generation>-<rows>.faiss``
    or ``.pq``): a plain name inside the index folder, never a path elsewhere."""
    return isinstance(name, str) and bool(_ANN_NAME.match(name))


def _bad_info(directory: str, info: dict[str, Any]) -> str | None:
    """Why the recorded ANN entry cannot be trusted (a file outside the index, a link, an
    ``nprobe`` that is not a whole number >= 1), or None."""
    key = info.get("file")
    if not isinstance(key, str) or not is_ann_name(key):
        return f"the recorded ANN file {key!r} is not a name inside the index folder"
    if (info.get("format") == "pq") != key.endswith(".pq"):
        return f"the recorded ANN file {key!r} does not match its format"
    if os.path.islink(os.path.join(directory, key)):
        return f"{key} is a symbolic link"
    nprobe = info.get("nprobe", 16)
    if isinstance(nprobe, bool) or not isinstance(nprobe, int) or not 1 <= nprobe <= 1 << 20:
        return f"the recorded nprobe {nprobe!r} is not a whole number >= 1"
    rerank = info.get("rerank", DEFAULT_RERANK)
    if isinstance(rerank, bool) or not isinstance(rerank, int) or not 1 <= rerank <= 1 << 20:
        return f"the recorded rerank {rerank!r} is not a whole number >= 1"
    return None


def _open_ann(directory: str, info: dict[str, Any], generation: int, dim: int) -> tuple[Any, dict[str, Any]]:
    key = str(info.get("file"))
    base = {"file": key, "kind": info.get("kind"), "rows": info.get("rows"), "nprobe": info.get("nprobe"),
            "recall_at_10": info.get("recall_at_10")}
    if info.get("format") == "pq":
        base["rerank"] = info.get("rerank", DEFAULT_RERANK)
    path = os.path.join(directory, key)
    if info.get("generation") != generation:
        return None, {**base, "state": "stale", "reason": "built before the store was compacted"}
    bad = _bad_info(directory, info)
    if bad is not None:
        return None, {**base, "state": "damaged", "reason": bad}
    if info.get("format") == "pq":
        return _open_pq(path, info, base, dim)
    if not os.path.isfile(path):
        return None, {**base, "state": "missing", "reason": f"{key} does not exist"}
    size = os.path.getsize(path)
    if "size" in info and size != info["size"]:
        return None, {**base, "state": "damaged", "reason": f"{size} bytes, expected {info['size']}"}
    if "crc32" in info and crc32_file(path) != info["crc32"]:
        return None, {**base, "state": "damaged", "reason": "checksum mismatch"}
    try:
        import faiss  # noqa: F401
    except ImportError:
        warnings.warn("the index has an ANN index but faiss is not installed (pip install faiss-cpu); "
                      "searching exactly", stacklevel=4)
        return None, {**base, "state": "no faiss", "reason": "faiss is not installed"}
    try:
        ix = faiss.read_index(path)
    except Exception as exc:  # noqa: BLE001 - faiss raises RuntimeError with its own message
        return None, {**base, "state": "damaged", "reason": f"unreadable ({str(exc).splitlines()[0][:200]})"}
    want_n = info.get("live")
    if ix.d != dim or (want_n is not None and ix.ntotal != want_n):
        return None, {**base, "state": "damaged",
                      "reason": f"{ix.ntotal} vectors of dimension {ix.d}, expected {want_n} of {dim}"}
    try:
        ivf = faiss.extract_index_ivf(ix)
        ivf.nprobe = int(info.get("nprobe", 16))
        ivf.parallel_mode = 1  # one query's lists spread over the threads
    except Exception:  # noqa: BLE001 - not an IVF index
        pass
    return ix, {**base, "state": "ok"}


def _open_pq(path: str, info: dict[str, Any], base: dict[str, Any], dim: int) -> tuple[Any, dict[str, Any]]:
    """An IVF-PQ folder (``milnce.index.ann_pq``): its faiss index (lists memory-mapped) and state."""
    if not os.path.isdir(path):
        return None, {**base, "state": "missing", "reason": f"{info.get('file')} does not exist"}
    try:
        import faiss  # noqa: F401
    except ImportError:
        return None, {**base, "state": "no faiss", "reason": "faiss is not installed"}
    if "meta_crc32" in info and crc32_file(os.path.join(path, META_FILE)) != info["meta_crc32"]:
        return None, {**base, "state": "damaged", "reason": f"{META_FILE} differs from the one this index built"}
    try:
        pq = open_pq(path, nprobe=info.get("nprobe", DEFAULT_NPROBE), rerank=info.get("rerank", DEFAULT_RERANK))
    except PQIndexError as exc:
        return None, {**base, "state": "damaged", "reason": str(exc)}
    want_n = info.get("live")
    if pq.d != dim or (want_n is not None and pq.ntotal != want_n):
        return None, {**base, "state": "damaged",
                      "reason": f"{pq.ntotal} vectors of dimension {pq.d}, expected {want_n} of {dim}"}
    return pq, {**base, "state": "ok"}


CROSS_CHECK_ROWS = 8


def cross_check(ix: Any, vectors: np.ndarray, rows: np.ndarray) -> str | None:
    """Stored rows as queries: each row's own id must be among the ANN index's candidates (as
    many as a search re-scores). Lists replaced by another index's, or ids that point at other
    rows, fail this. Returns why the index is damaged (fewer than half came back), or None."""
    if len(rows) == 0:
        return None
    pick = rows[np.linspace(0, len(rows) - 1, min(CROSS_CHECK_ROWS, len(rows))).astype(np.int64)]
    try:
        _, ids = ix.search(np.ascontiguousarray(np.asarray(vectors[pick]), dtype=np.float32), 400)
    except PQDamagedError as exc:
        return str(exc)
    found = sum(int(r) in set(c.tolist()) for r, c in zip(pick, ids))
    if 2 * found < len(pick):
        return f"only {found} of {len(pick)} stored rows found themselves through it (cross-check against the store)"
    return None


class _LiveRows:
    """The live rows of a store as one N x d array-like (what ``build_pq`` reads)."""

    def __init__(self, vectors: np.ndarray, rows: np.ndarray) -> None:
        self.vectors, self.rows = vectors, rows
        self.shape = (len(rows), vectors.shape[1])

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: Any) -> np.ndarray:
        return np.asarray(self.vectors[self.rows[key]])


# -- writing (readonly=False) -------------------------------------------------------------


def build_ann(index: AnnSource, *, queries: np.ndarray | None = None, nlist: int | None = None, m: int = 0,
              target_recall: float | None = None, progress: bool = False, kind: str = "ivf",
              rerank: int | None = None) -> dict[str, Any]:
    """Build the approximate index over the live rows (faiss IVF with 8-bit scalar-quantised
    codes, or PQ with ``m`` bytes per window; candidates are re-scored exactly); ``kind="pq"``:
    IVF-PQ with an HNSW quantizer and on-disk lists (``milnce.index.ann_pq``, parameters from the
    window count, ``rerank`` candidates re-scored per query, default ``DEFAULT_RERANK``), a folder.
    Measures recall@10 against exact search on ``queries`` (or held-out rows) and picks the
    smallest ``nprobe`` reaching ``target_recall`` (default 0.98 for ivf, 0.99 for pq). Writes the file (atomically) and returns what
    the index records about it; the caller (``Index.build_ann``) commits that."""
    if kind not in ("ivf", "pq"):
        raise IndexFolderError(f"unknown ANN kind {kind!r} (ivf or pq)")
    try:
        import faiss  # noqa: F401
    except ImportError as exc:
        raise IndexFolderError("--ann needs faiss: pip install faiss-cpu (exact search works without it)") from exc
    if index.num_live == 0:
        raise IndexFolderError("the index is empty; add videos before building the ANN index")
    rng = np.random.default_rng(0)
    mask = index.live_mask()
    rows = np.flatnonzero(mask) if mask is not None else np.arange(index.num_rows, dtype=np.int64)
    if queries is None or len(queries) == 0:
        queries = _held_out_queries(index, rows, rng)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if kind == "pq":
        return _build_pq_ann(index, rows, queries, 0.99 if target_recall is None else target_recall, rerank)
    return _build_ivf_ann(index, rows, queries, 0.98 if target_recall is None else target_recall, nlist, m, rng)


def _held_out_queries(index: AnnSource, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Up to 200 stored rows, each moved by a little noise: queries near the data, not on it."""
    qrows = rows[np.sort(rng.choice(len(rows), size=min(200, len(rows)), replace=False))]
    noise = rng.standard_normal((len(qrows), index.dim)).astype(np.float32) * 0.1
    return np.asarray(index.vectors[qrows]) + noise


def _exact_top(index: AnnSource, queries: np.ndarray, k: int) -> np.ndarray:
    """The exact top-``k`` rows of each query (the truth recall is measured against)."""
    return np.argpartition(-index.scores(queries), k - 1, axis=1)[:, :k]


def _recall(ix: Any, index: AnnSource, queries: np.ndarray, truth: np.ndarray) -> float:
    """Recall@k of the re-scored ANN search against ``truth`` (Q x k exact rows)."""
    kk = truth.shape[1]
    got = _ann_candidates(ix, index.vectors, queries, kk, index.num_rows)
    return float(np.mean([len(set(g[:kk].tolist()) & set(t.tolist())) / kk for g, t in zip(got, truth)]))


def _tune_nprobe(ix: Any, set_nprobe: Callable[[int], None], index: AnnSource, queries: np.ndarray,
                 truth: np.ndarray, steps: Sequence[int], nlist: int, target_recall: float) -> tuple[int, float, dict]:
    """The smallest ``nprobe`` of ``steps`` (up to ``nlist``) whose recall@10 reaches
    ``target_recall``, else the largest tried; with the recall of each tried."""
    table: dict[int, float] = {}
    chosen, recall = nlist, 0.0
    for nprobe in steps:
        if nprobe > nlist:
            break
        set_nprobe(nprobe)
        recall = _recall(ix, index, queries, truth)
        table[nprobe], chosen = recall, nprobe
        if recall >= target_recall:
            break
    set_nprobe(chosen)
    return chosen, recall, table


IVF_NPROBES = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
PQ_NPROBES = (4, 8, 16, 32, 64, 128, 256)


def _build_ivf_ann(index: AnnSource, rows: np.ndarray, queries: np.ndarray, target_recall: float,
                   nlist: int | None, m: int, rng: np.random.Generator) -> dict[str, Any]:
    """``build_ann(kind="ivf")``: one faiss file over the live rows and its tuned ``nprobe``."""
    import faiss

    n, live = index.num_rows, len(rows)
    if nlist is None:  # ~sqrt(N) lists: a probe scans ~sqrt(N) codes
        nlist = int(min(65536, max(1, round(math.sqrt(live)))))
        nlist = min(nlist, max(1, live // 39))
    # Codes: 8-bit scalar quantisation (a quarter of the float32 store, small score error) for
    # large stores, exact vectors for small ones; PQ (m bytes/window) when asked, for huge ones.
    desc = f"IVF{nlist},PQ{m}" if m else f"IVF{nlist},SQ8" if live >= 20000 else f"IVF{nlist},Flat"
    ix = faiss.index_factory(index.dim, desc, faiss.METRIC_INNER_PRODUCT)
    ntrain = min(live, max(nlist * 50, 20000))
    t0 = time.perf_counter()
    ix.train(np.ascontiguousarray(index.vectors[rows[np.sort(rng.choice(live, size=ntrain, replace=False))]]))
    for s in range(0, live, SCAN_BLOCK * 2):
        ids = rows[s:s + SCAN_BLOCK * 2].astype(np.int64)
        ix.add_with_ids(np.ascontiguousarray(index.vectors[ids]), ids)
    build_s = time.perf_counter() - t0
    ivf = faiss.extract_index_ivf(ix)

    def set_nprobe(nprobe: int) -> None:
        ivf.nprobe = nprobe

    truth = _exact_top(index, queries, min(10, live))
    steps = sorted({*(p for p in IVF_NPROBES if p <= nlist), nlist})  # every list last: the exact top
    chosen, recall, table = _tune_nprobe(ix, set_nprobe, index, queries, truth, steps, nlist, target_recall)
    name = f"ann-{index.generation}-{n}.faiss"
    written = _write_ivf_file(ix, index.directory, name)
    return {"file": name, "kind": desc, "rows": n, "live": live, "generation": index.generation,
            "nlist": nlist, "nprobe": chosen, "recall_at_10": recall, "recall_by_nprobe": table,
            "queries": len(queries), "build_s": build_s, "built": now(), **written}


def _write_ivf_file(ix: Any, directory: str, name: str) -> dict[str, int]:
    """``ix`` written atomically as ``name`` in the index folder; its size and CRC-32."""
    import faiss

    try:
        with atomic_path(os.path.join(directory, name), prefix=f"{name}.") as tmp:  # swept as ann-*
            faiss.write_index(ix, tmp)
            written = {"size": os.path.getsize(tmp), "crc32": crc32_file(tmp)}
        fsync_dir(directory)
    except (OSError, RuntimeError) as exc:
        raise IndexWriteError(f"could not write the ANN index into {directory} ({exc})") from exc
    return written


def _build_pq_ann(index: AnnSource, rows: np.ndarray, queries: np.ndarray, target_recall: float,
                  rerank: int | None) -> dict[str, Any]:
    """``build_ann(kind="pq")``: the IVF-PQ folder over the live rows and its tuned ``nprobe``."""
    n = index.num_rows
    params = choose_pq_params(len(rows), index.dim)
    name = f"ann-{index.generation}-{n}.pq"
    path = os.path.join(index.directory, name)
    if os.path.exists(path):
        shutil.rmtree(path, ignore_errors=True)  # an unreferenced leftover of an earlier build
    try:
        meta = build_pq(_LiveRows(index.vectors, rows), path, params=params, ids=rows.astype(np.int64))  # type: ignore[arg-type]
        fsync_dir(index.directory)
    except (OSError, RuntimeError) as exc:
        raise IndexWriteError(f"could not write the PQ index into {index.directory} ({exc})") from exc
    pq = open_pq(path, rerank=DEFAULT_RERANK if rerank is None else rerank)
    truth = _exact_top(index, queries, min(10, len(rows)))
    chosen, recall, table = _tune_nprobe(pq, pq.set_nprobe, index, queries, truth, PQ_NPROBES, params.nlist,
                                         target_recall)
    return {"file": name, "format": "pq", "kind": meta["kind"], "rows": n, "live": len(rows),
            "generation": index.generation, "nlist": params.nlist, "m": params.m, "nprobe": chosen,
            "rerank": pq.rerank, "recall_at_10": recall, "recall_by_nprobe": table, "queries": len(queries),
            "build_s": meta["build_s"], "threads": meta["threads"], "built": now(),
            "size": sum(meta["bytes"].values()), "meta_crc32": crc32_file(os.path.join(path, META_FILE))}


def candidates_for(ix: Any, k: int) -> int:
    """How many ANN candidates a top-``k`` search re-scores exactly from the float32 store: an
    IVF-PQ index's own count (``PQIndex.candidates``, ``max(4k, rerank)``), else ``max(4k, 400)``."""
    own = getattr(ix, "candidates", None)
    return int(own(k)) if callable(own) else max(4 * k, 400)


def _ann_candidates(ix: Any, vectors: np.ndarray, queries: np.ndarray, k: int, rows: int) -> list[np.ndarray]:
    """Top-k rows per query from the ANN index, re-scored exactly from the store (as many
    candidates as search takes: ``candidates_for``)."""
    r = candidates_for(ix, k)
    _, ids = ix.search(np.ascontiguousarray(queries, dtype=np.float32), r)
    out = []
    for q, cand in zip(queries, ids):
        cand = cand[(cand >= 0) & (cand < rows)]
        cand = np.unique(cand)
        s = np.asarray(vectors[cand]) @ q
        order = np.argsort(-s, kind="stable")[:k]
        out.append(cand[order])
    return out

