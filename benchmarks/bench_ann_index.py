"""Approximate-nearest-neighbour index benchmark: flat vs IVF vs HNSW on a catalogue-sized gallery.

Cheatsheet::

    .venv/bin/python benchmarks/bench_ann_index.py                   # 1,000,000 x 256, 1000 queries, 2 threads
    .venv/bin/python benchmarks/bench_ann_index.py --quick           # 50,000 items, 200 queries
    .venv/bin/python benchmarks/bench_ann_index.py --n 200000 --kinds flat,hnsw --no-write

The gallery is synthetic: `--clusters` gaussian clusters of unit embeddings
(a random unit centre, a per-cluster 32-dimensional spread of norm about 0.8
and an isotropic noise of norm 0.3, then L2 normalisation: cosine to the
centre about 0.75); the queries are held-out draws from the same clusters.
Every index is built by mmf_fashion.retrieval.index.build_faiss_index with
the package defaults for that gallery size (those of `mmf-fashion index build
--kind ...`), and searched by faiss_search with a few nprobe / ef values.
For each: build time, index size (faiss serialisation, bytes), process RSS
increase over the build, latency per query at batch 1 (one query per call)
and batch 64 (call time / 64), p50 and p99, and recall@10 against the exact
top 10 (the flat index). Writes benchmarks/results/ann_index.{md,json}.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path
from typing import Dict, List

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import RESULTS_DIR, fmt_seconds, machine_line, table  # noqa: E402
from mmf_fashion.retrieval.index import build_faiss_index, faiss_search  # noqa: E402

SPREAD_RANK = 32
SPREAD, NOISE = 0.8, 0.3
K = 10


def rss_bytes() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def make_data(n: int, queries: int, dim: int, clusters: int, seed: int):
    """(gallery (n, dim), queries (q, dim)) float32 unit rows from the same clusters."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    total = n + queries
    labels = rng.integers(0, clusters, total)
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(clusters + 1))
    data = np.empty((total, dim), dtype=np.float32)
    for cluster in range(clusters):
        rows = order[bounds[cluster] : bounds[cluster + 1]]
        if not len(rows):
            continue
        basis = rng.standard_normal((SPREAD_RANK, dim)).astype(np.float32) / np.sqrt(dim)
        spread = rng.standard_normal((len(rows), SPREAD_RANK)).astype(np.float32) / np.sqrt(SPREAD_RANK)
        noise = rng.standard_normal((len(rows), dim)).astype(np.float32) / np.sqrt(dim)
        data[rows] = centres[cluster] + SPREAD * (spread @ basis) + NOISE * noise
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    # the queries are the last rows of a random order: held out, same distribution
    return data[:n], np.ascontiguousarray(data[n:])


def percentile_ms(values: List[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q) * 1e3)


def latencies(index, kind, params, queries, setting, batch, limit):
    """Seconds per query of `limit` queries at this batch size (one search call per batch)."""
    times = []
    count = min(limit, len(queries)) // batch * batch
    for start in range(0, count, batch):
        chunk = queries[start : start + batch]
        begin = time.perf_counter()
        faiss_search(index, kind, params, chunk, K, **setting)
        times.append((time.perf_counter() - begin) / batch)
    return times


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    hits = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(found, exact))
    return hits / exact.size


def measure(label, kind, given, settings, gallery, queries, exact, args, report) -> List[Dict]:
    gc.collect()
    before = rss_bytes()
    started = time.perf_counter()
    index, params = build_faiss_index(gallery, kind, given)
    build_s = time.perf_counter() - started
    rss_increase = rss_bytes() - before
    import faiss

    size = int(faiss.serialize_index(index).nbytes)
    rows = []
    for setting in settings:
        # warm-up: page in the index, let the threads start
        faiss_search(index, kind, params, queries[:64], K, **setting)
        limit = args.flat_single_queries if kind == "flat" else args.single_queries
        single = latencies(index, kind, params, queries, setting, 1, limit)
        batched = latencies(index, kind, params, queries, setting, 64, len(queries))
        if exact is None:
            found = exact = faiss_search(index, kind, params, queries, K, **setting)[1]
        else:
            found = faiss_search(index, kind, params, queries, K, **setting)[1]
        shown = {**params, **{{"ef": "ef_search"}.get(key, key): value for key, value in setting.items()}}
        row = {
            "index": label,
            "kind": kind,
            "params": shown,
            "build_s": build_s,
            "index_bytes": size,
            "rss_increase_bytes": rss_increase,
            "batch1_p50_ms": percentile_ms(single, 50),
            "batch1_p99_ms": percentile_ms(single, 99),
            "batch1_queries": len(single),
            "batch64_p50_ms": percentile_ms(batched, 50),
            "batch64_p99_ms": percentile_ms(batched, 99),
            "batch64_calls": len(batched),
            "recall_at_10": recall_at_k(found, exact),
        }
        rows.append(row)
        report(row)
    del index
    gc.collect()
    return rows, exact


def describe(row: Dict) -> str:
    p = row["params"]
    if row["kind"] == "ivf":
        text = f"nlist={p['nlist']}, nprobe={p['nprobe']}"
        return text + (f", pq_m={p['pq_m']}" if p.get("pq_m") else "")
    if row["kind"] == "hnsw":
        return f"M={p['M']}, efC={p['ef_construction']}, ef={p['ef_search']}"
    return "exact"


def markdown(
    rows: List[Dict], args, command: str, machine: str, load: float, seconds: float, notes: List[str] = ()
) -> str:
    header = [
        "index",
        "parameters",
        "build",
        "index size",
        "RSS increase",
        "batch 1 p50",
        "batch 1 p99",
        "batch 64 p50",
        "batch 64 p99",
        "recall@10",
    ]
    body = [
        [
            r["index"],
            describe(r),
            fmt_seconds(r["build_s"]),
            f"{r['index_bytes'] / 2**20:,.0f} MiB",
            f"{r['rss_increase_bytes'] / 2**20:,.0f} MiB",
            f"{r['batch1_p50_ms']:.2f} ms",
            f"{r['batch1_p99_ms']:.2f} ms",
            f"{r['batch64_p50_ms']:.3f} ms",
            f"{r['batch64_p99_ms']:.3f} ms",
            f"{r['recall_at_10']:.3f}",
        ]
        for r in rows
    ]
    good = [r for r in rows if r["recall_at_10"] >= 0.95 and r["batch1_p50_ms"] <= 5.0]
    best = min(good, key=lambda r: r["batch1_p50_ms"]) if good else None
    target = (
        f"Target (p50 <= 5 ms per single query with recall@10 >= 0.95): met by {best['index']} "
        f"({describe(best)}): {best['batch1_p50_ms']:.2f} ms, recall@10 {best['recall_at_10']:.3f}."
        if best
        else "Target (p50 <= 5 ms per single query with recall@10 >= 0.95): not met by any row."
    )
    lines = [
        f"## Approximate nearest neighbours: flat vs IVF vs HNSW, {args.n:,} x {args.dim}",
        "",
        machine,
        f"faiss threads: {args.threads}. The machine is shared: 1-minute load average {load:.2f} at start "
        "(latencies move with the load of the other processes).",
        "",
        f"Command: `{command}`",
        *[line for note in notes for line in ("", note)],
        "",
        f"Gallery: {args.n:,} unit embeddings ({args.dim}-d) in {args.clusters:,} gaussian clusters; "
        f"{args.queries:,} held-out queries from the same clusters; recall@10 against the exact top 10 "
        f"(flat). Batch 1: {args.single_queries} single-query calls per row ({args.flat_single_queries} for flat); "
        "batch 64: "
        "call time / 64 over the query set. Build = train + add; RSS increase = resident memory after the "
        f"build minus before. Total time {fmt_seconds(seconds)}.",
        "",
        table(header, body, "llrrrrrrrr"),
        "",
        target,
        "",
        reading(rows),
    ]
    return "\n".join(lines)


def reading(rows: List[Dict]) -> str:
    def pick(name):
        return [r for r in rows if r["index"] == name]

    parts = []
    flat, ivf, pq, hnsw = pick("flat"), pick("ivf"), pick("ivf-pq"), pick("hnsw")
    if flat:
        parts.append(
            f"Exact search scans every item: {flat[0]['batch1_p50_ms']:.1f} ms per single query, "
            f"{flat[0]['batch64_p50_ms']:.2f} ms per query in batches of 64 (matrix products)."
        )
    if ivf:
        ok = [r for r in ivf if r["recall_at_10"] >= 0.95]
        r = min(ok, key=lambda r: r["batch1_p50_ms"]) if ok else max(ivf, key=lambda r: r["recall_at_10"])
        parts.append(
            f"IVF-Flat at nprobe={r['params']['nprobe']} reaches recall@10 {r['recall_at_10']:.3f} at "
            f"{r['batch1_p50_ms']:.2f} ms per single query; its memory is the flat vectors plus ids, "
            f"its build is dominated by k-means ({fmt_seconds(r['build_s'])})."
        )
    if pq:
        r = pq[-1]
        parts.append(
            f"IVF-PQ stores {r['params']['pq_m']} bytes per item ({r['index_bytes'] / 2**20:,.0f} MiB) "
            f"at the cost of recall ({r['recall_at_10']:.3f}): the codes approximate the scores, "
            "so it suits galleries that do not fit in memory, with a re-ranking of its candidates."
        )
    if hnsw:
        r = max(hnsw, key=lambda r: (r["recall_at_10"], -r["batch1_p50_ms"]))
        links = r["index_bytes"] - (flat[0]["index_bytes"] if flat else 0)
        parts.append(
            f"HNSW's best row (efC={r['params']['ef_construction']}, ef={r['params']['ef_search']}) "
            f"reaches recall@10 {r['recall_at_10']:.3f} at {r['batch1_p50_ms']:.2f} ms per single query; "
            f"its build took {fmt_seconds(r['build_s'])} on these threads and its graph adds "
            f"{links / 2**20:,.0f} MiB over the vectors. Within a cluster the items are nearly "
            "equidistant (a 32-d spread plus 256-d noise), which a graph walk finds harder than IVF's "
            "choice of cluster: a wider beam (ef) or build beam (efC) buys the recall back."
        )
    approximate = [r for r in rows if r["kind"] != "flat"]
    if ivf and min(r["recall_at_10"] for r in ivf) >= 0.99:
        parts.append(
            "These synthetic clusters are well separated (IVF keeps recall@10 >= 0.99 even at the "
            "smallest nprobe): real catalogue embeddings overlap more and need a larger nprobe / ef for "
            "the same recall, so measure recall on your own gallery before choosing."
        )
    elif approximate:
        parts.append("Recall depends on how much the gallery's clusters overlap: measure it on your own gallery.")
    parts.append(
        "p99 at batch 1 includes the waits of the two OpenMP threads for a core on a shared machine; "
        "the p50 is the steadier figure. RSS increase can be below the index size when memory freed "
        "by an earlier build is reused."
    )
    return " ".join(parts)


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="gallery size (default 1,000,000)")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--clusters", type=int, default=2000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--single-queries", type=int, default=1000, help="queries timed one by one (batch 1)")
    parser.add_argument(
        "--flat-single-queries",
        type=int,
        default=100,
        help="queries timed one by one on the exact index (slow at 1M items)",
    )
    parser.add_argument("--threads", type=int, default=2, help="faiss OpenMP threads (default 2)")
    parser.add_argument("--kinds", default="flat,ivf,hnsw,ivf-pq", help="comma list of flat, ivf, ivf-pq, hnsw")
    parser.add_argument("--ef-construction", type=int, help="hnsw build beam (default: the package default)")
    parser.add_argument("--efs", default="32,64,128", help="hnsw search beams to measure (default 32,64,128)")
    parser.add_argument("--pq-m", type=int, default=32, help="IVF-PQ sub-quantizers (bytes per item)")
    parser.add_argument("--quick", action="store_true", help="50,000 items, 200 queries, 200 clusters")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", default=RESULTS_DIR)
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument(
        "--render-only",
        action="store_true",
        help="rewrite ann_index.md from ann_index.json in --out-dir (no measurement)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.queries, args.clusters = min(args.n, 50_000), min(args.queries, 200), min(args.clusters, 200)
    args.single_queries = min(args.single_queries, args.queries)
    args.efs = [int(ef) for ef in str(args.efs).split(",") if ef.strip()]
    return args


def render_only(args) -> int:
    with open(os.path.join(args.out_dir, "ann_index.json")) as handle:
        saved = json.load(handle)
    for key in ("n", "dim", "clusters", "queries", "threads", "quick"):
        setattr(args, key, saved[key])
    args.single_queries = saved.get("single_queries", min(1000, args.queries))
    args.flat_single_queries = saved.get("flat_single_queries", 100)
    path = os.path.join(args.out_dir, "ann_index.md")
    with open(path, "w") as handle:
        handle.write(
            markdown(
                saved["rows"],
                args,
                saved["command"],
                saved["machine"],
                saved["load_average_at_start"],
                saved["seconds"],
                saved.get("notes", []),
            ).rstrip()
            + "\n"
        )
    print(f"wrote {path}")
    return 0


def main(argv=None) -> int:
    args = parse(argv)
    if args.render_only:
        return render_only(args)
    command = " ".join(["python benchmarks/bench_ann_index.py", *(sys.argv[1:] if argv is None else argv)])
    load = os.getloadavg()[0]
    import faiss
    import torch

    faiss.omp_set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    machine = machine_line("cpu", threads=args.threads, load=load)
    print(machine, flush=True)
    started = time.time()
    gallery, queries = make_data(args.n, args.queries, args.dim, args.clusters, args.seed)
    print(f"data {args.n:,} x {args.dim}: {time.time() - started:.1f} s", flush=True)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    plans = {
        "flat": ("flat", None, [{}]),
        "ivf": ("ivf", None, None),  # nprobe values follow the default nlist, below
        "ivf-pq": ("ivf", {"pq_m": args.pq_m}, None),
        "hnsw": ("hnsw", {"ef_construction": args.ef_construction}, [{"ef": ef} for ef in args.efs]),
    }
    unknown = sorted(set(kinds) - set(plans))
    if unknown:
        raise SystemExit(f"--kinds: unknown {unknown}; choose from {sorted(plans)}")
    rows: List[Dict] = []
    exact = None
    if "flat" not in kinds:  # the exact answers, untimed
        exact_index, params = build_faiss_index(gallery, "flat")
        exact = faiss_search(exact_index, "flat", params, queries, K)[1]
        del exact_index
        print(f"exact top {K}: {time.time() - started:.1f} s", flush=True)
    elif kinds[0] != "flat":
        kinds.remove("flat")
        kinds.insert(0, "flat")  # the exact answers come first

    def report(row):
        print(
            f"{row['index']:7s} {describe(row):40s} build {row['build_s']:8.1f} s  size "
            f"{row['index_bytes'] / 2**20:8.0f} MiB  rss +{row['rss_increase_bytes'] / 2**20:6.0f} MiB  "
            f"b1 p50 {row['batch1_p50_ms']:7.2f} ms p99 {row['batch1_p99_ms']:7.2f}  b64 p50 "
            f"{row['batch64_p50_ms']:6.3f} ms  recall@10 {row['recall_at_10']:.3f}",
            flush=True,
        )
        rows.append(row)
        if not args.no_write:  # after every row: an interrupted run keeps what it measured
            write(rows, args, command, machine, load, time.time() - started, partial=True)

    import math

    for name in kinds:
        kind, given, settings = plans[name]
        if settings is None:  # nprobe: a quarter, the default and four times the default
            nlist = max(1, min(round(4 * math.sqrt(args.n)), args.n // 39))
            default = round(math.sqrt(nlist))
            settings = [{"nprobe": max(1, default // 4)}, {"nprobe": default}, {"nprobe": min(nlist, 4 * default)}]
            if name == "ivf-pq":
                settings = settings[1:]
        _, exact = measure(name, kind, given, settings, gallery, queries, exact, args, report)
    seconds = time.time() - started
    if not args.no_write:
        path = write(rows, args, command, machine, load, seconds, partial=False)
        print(f"wrote {path}")
    else:
        print(markdown(rows, args, command, machine, load, seconds))
    return 0


def write(rows, args, command, machine, load, seconds, partial: bool) -> str:
    os.makedirs(args.out_dir, exist_ok=True)
    path = os.path.join(args.out_dir, "ann_index.md")
    with open(path, "w") as handle:
        handle.write(markdown(rows, args, command, machine, load, seconds).rstrip() + "\n")
    with open(os.path.join(args.out_dir, "ann_index.json"), "w") as handle:
        json.dump(
            {
                "name": "ann_index",
                "command": command,
                "machine": machine,
                "load_average_at_start": load,
                "n": args.n,
                "dim": args.dim,
                "clusters": args.clusters,
                "queries": args.queries,
                "threads": args.threads,
                "quick": args.quick,
                "single_queries": args.single_queries,
                "flat_single_queries": args.flat_single_queries,
                "partial": partial,
                "seconds": seconds,
                "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
                "rows": rows,
            },
            handle,
            indent=1,
        )
    return path


if __name__ == "__main__":
    sys.exit(main())
