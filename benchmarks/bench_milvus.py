"""Milvus Lite beside the embedded search, on the same synthetic store, in one process.

The store is ``bench_ann_pq.make_store``'s mixture (2,000 Gaussian clusters of uneven size,
centres on the unit sphere of R^512), ``--n`` windows (default 1M), queries fresh draws from the
same mixture. Three engines answer the same queries, top-10 by inner product:

- **exact**: numpy over the float32 memory map (a blocked scan; the baseline for the ratios),
- **IVF-PQ**: the embedded ``milnce.index.ann_pq`` index (its defaults: ``nprobe`` 64, ``rerank`` 1,000: the
  default exact re-score of PQ candidates from the memory map),
- **Milvus Lite** (pymilvus + milvus-lite, in-process from a ``.db`` file): a collection with an
  int64 primary key, the vector and two scalar fields (``video`` int64, ``start`` float), an
  ``--index-type`` (IVF_FLAT or FLAT) index with metric IP, inserted ``--batch`` rows at a time.

Measured per engine: ingest (windows/s: inserting, or building the index from the store), the
time until it answers, single-query latency p50/p99 over ``--queries`` queries, recall@10 against
the exact scan. Prints one table with latency ratios against the exact scan; the core count and
the load average are printed too (the numbers of a shared machine move with its load).

    python benchmarks/bench_milvus.py [--n 1000000] [--queries 200] [--index-type IVF_FLAT]
        [--nlist 1024] [--nprobe 32] [--batch 10000] [--dir DIR] [--json out.json]

Disk: the store (n x 2 KB) plus Milvus's copy (~4 KB per window for IVF_FLAT); the work folder
(default a new one under the temporary folder) is removed at the end unless ``--dir`` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from bench_ann_pq import DIM, exact_top, make_store  # noqa: E402


def latency(fn, queries: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:  # type: ignore[no-untyped-def]
    """``fn(query) -> rows`` for each query, timed one at a time: (rows per query, ms per query)."""
    got, lat = [], []
    for q in queries:
        t0 = time.perf_counter()
        got.append(np.asarray(fn(q)))
        lat.append(time.perf_counter() - t0)
    return got, np.array(lat) * 1e3


def du(path: str) -> int:
    """Bytes under ``path`` (a file or a folder)."""
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)


def recall_at_10(got: list[np.ndarray], truth: np.ndarray) -> float:
    return float(np.mean([len(set(g[:10].tolist()) & set(t.tolist())) / 10 for g, t in zip(got, truth)]))


def summary(name: str, got: list[np.ndarray], lat_ms: np.ndarray, truth: np.ndarray, **extra: float) -> dict:
    return {"engine": name, "recall_at_10": recall_at_10(got, truth), "p50_ms": float(np.percentile(lat_ms, 50)),
            "p99_ms": float(np.percentile(lat_ms, 99)), "load": os.getloadavg()[0], **extra}


def run_exact(x: np.ndarray, q: np.ndarray, truth: np.ndarray, queries: int) -> dict:
    got, lat = latency(lambda v: exact_top(x, v[None], 10)[0][0], q[:queries])
    return summary("exact scan (numpy, memory map)", got, lat, truth[:queries], ingest_per_s=float("nan"),
                   ready_s=0.0)


def run_pq(x: np.ndarray, q: np.ndarray, truth: np.ndarray, work: str, nprobe: int | None) -> dict:
    from milnce.index.ann_pq import build_pq, open_pq, search_pq

    t0 = time.perf_counter()
    meta = build_pq(x, os.path.join(work, "pq"))
    build_s = time.perf_counter() - t0
    pq = open_pq(os.path.join(work, "pq"), **({} if nprobe is None else {"nprobe": nprobe}))
    ready_s = time.perf_counter() - t0
    for v in q[:20]:  # warm the probed pages once, as a serving process would
        search_pq(pq, x, v, 10)
    got, lat = latency(lambda v: search_pq(pq, x, v, 10)[0][0], q)
    import faiss

    nprobe_used = faiss.extract_index_ivf(pq.index).nprobe
    return summary(f"IVF-PQ embedded (nprobe {nprobe_used}, rerank {pq.rerank}, {meta['threads']} threads)",
                   got, lat, truth, ingest_per_s=len(x) / build_s, ready_s=ready_s)


def run_milvus(x: np.ndarray, q: np.ndarray, truth: np.ndarray, work: str, *, index_type: str, nlist: int,
               nprobe: int, batch: int) -> dict:
    from pymilvus import DataType, MilvusClient

    client = MilvusClient(os.path.join(work, "milvus.db"))
    try:
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=DIM)
        schema.add_field("video", DataType.INT64)
        schema.add_field("start", DataType.FLOAT)
        params = client.prepare_index_params()
        params.add_index(field_name="vector", index_type=index_type, metric_type="IP",
                         params={"nlist": nlist} if index_type == "IVF_FLAT" else {})
        client.create_collection("windows", schema=schema, index_params=params)
        t0 = time.perf_counter()
        for s in range(0, len(x), batch):
            block = np.asarray(x[s:s + batch], dtype=np.float32)
            client.insert("windows", [{"id": s + i, "vector": v, "video": (s + i) // 100,
                                       "start": float((s + i) % 100) * 1.6} for i, v in enumerate(block)])
        client.flush("windows")
        insert_s = time.perf_counter() - t0
        client.load_collection("windows")
        ready_s = time.perf_counter() - t0
        search_params = {"metric_type": "IP", "params": {"nprobe": nprobe} if index_type == "IVF_FLAT" else {}}

        def one(v: np.ndarray) -> list[int]:
            hits = client.search("windows", data=[v.tolist()], limit=10, search_params=search_params)[0]
            return [int(h["id"]) for h in hits]

        for v in q[:20]:
            one(v)
        got, lat = latency(one, q)
        label = f"Milvus Lite {index_type}" + (f" (nlist {nlist}, nprobe {nprobe})" if index_type == "IVF_FLAT" else "")
        return summary(label, got, lat, truth, ingest_per_s=len(x) / insert_s, ready_s=ready_s,
                       disk_bytes=float(du(os.path.join(work, "milvus.db"))))
    finally:
        client.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="windows (default 1M)")
    ap.add_argument("--clusters", type=int, default=2000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--exact-queries", type=int, default=20, help="queries timed on the exact scan (it is slow)")
    ap.add_argument("--index-type", choices=("IVF_FLAT", "FLAT"), default="IVF_FLAT")
    ap.add_argument("--nlist", type=int, default=1024)
    ap.add_argument("--nprobe", type=int, default=32, help="Milvus IVF_FLAT lists probed per query")
    ap.add_argument("--pq-nprobe", type=int, default=None, help="IVF-PQ lists probed (default: open_pq's)")
    ap.add_argument("--batch", type=int, default=10000, help="rows per Milvus insert")
    ap.add_argument("--dir", default=None, help="work folder (default: a temporary one, removed)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    import faiss

    faiss.omp_set_num_threads(1)  # single-query latency on one thread, like the exact scan
    work = args.dir or tempfile.mkdtemp(prefix="bench_milvus_")
    os.makedirs(work, exist_ok=True)
    res: dict = {"n": args.n, "dim": DIM, "cores": os.cpu_count(), "load_before": os.getloadavg(), "rows": []}
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; {args.n} x {DIM} windows", flush=True)
    try:
        x = make_store(os.path.join(work, "vectors.npy"), args.n, args.clusters)
        q = np.load(os.path.join(work, "vectors.npy.q.npy"))[:args.queries]
        truth, _ = exact_top(x, q, 10)
        res["rows"].append(run_exact(x, q, truth, args.exact_queries))
        print(res["rows"][-1], flush=True)
        res["rows"].append(run_pq(x, q, truth, work, args.pq_nprobe))
        print(res["rows"][-1], flush=True)
        res["rows"].append(run_milvus(x, q, truth, work, index_type=args.index_type, nlist=args.nlist,
                                      nprobe=args.nprobe, batch=args.batch))
        print(res["rows"][-1], flush=True)
        print_table(res["rows"])
    finally:
        res["load_after"] = os.getloadavg()
        if args.json:
            with open(args.json, "w") as f:
                json.dump(res, f, indent=1, default=str)
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def print_table(rows: list[dict]) -> None:
    base = rows[0]["p50_ms"]
    print("| engine | ingest (windows/s) | ready after | recall@10 | p50 | p99 | p50 vs exact |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        ingest = "-" if r["ingest_per_s"] != r["ingest_per_s"] else f"{r['ingest_per_s']:,.0f}"
        ratio = base / r["p50_ms"]
        vs = "1x" if r is rows[0] else f"{ratio:.1f}x faster" if ratio >= 1 else f"{1 / ratio:.1f}x slower"
        print(f"| {r['engine']} | {ingest} | {r['ready_s']:.0f} s | {r['recall_at_10']:.3f} | {r['p50_ms']:.1f} ms | "
              f"{r['p99_ms']:.1f} ms | {vs} |")


if __name__ == "__main__":
    raise SystemExit(main())
