"""Similarity-search benchmark: pgvector HNSW latency and recall@10 against an exact scan, in one run.

    .venv/bin/python bench/search.py [--rows 1000000] [--queries 200] [--ef 40,100,200] [--keep]

1. A separate database (`bench_search` on the embedded server, or on DATABASE_URL's server) gets --rows
   synthetic 256-d unit vectors, clustered like slide embeddings (Zipf-sized clusters; inside a cluster the
   points spread over an --intrinsic-dimensional subspace, or isotropically with 0, the worst case), loaded
   with binary COPY built in numpy; each row carries a `site` (one of 20, independent of the cluster: the
   hard case for a filter).
2. The HNSW index (vector_cosine_ops; m and ef_construction as in the app unless --m/--ef-construction) is built with a large
   maintenance_work_mem and parallel maintenance workers; the build time is printed.
3. --queries fresh points from the same distribution: latency p50/p95 of `ORDER BY embedding <=> q
   LIMIT 10` over the index, for each hnsw.ef_search; recall@10 against the exact top 10 (numpy over the
   same float32 rows; a few queries are also run as an exact scan in PostgreSQL, which must agree).
4. The same with a filter (site = s, 5% of rows) with iterative scans (hnsw.iterative_scan = relaxed_order)
   and without (the pre-0.8 behaviour: a filtered index scan can return fewer than 10 rows).
5. halfvec: the same measurements (unfiltered, and filtered with iterative scans) on a halfvec HNSW index
   (halfvec_cosine_ops, what the app's slide and query vectors use) over the first --halfvec-rows rows, with
   recall against the exact float32 answer; and the recall of exact fp16 ranking alone.
Targets: recall@10 >= 0.95 and p95 < 20 ms (printed with each figure).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench_server import bench_database  # noqa: E402 - bench/ is the script directory

DIM = 256
SITES = 20
TARGET_RECALL, TARGET_P95_MS = 0.95, 20.0


def log(message: str) -> None:
    print(message, flush=True)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


# --- data --------------------------------------------------------------------------------------------
def clustered(rows: int, seed: int, intrinsic: int = 16, clusters: int | None = None
              ) -> tuple[np.ndarray, Sampler]:
    """(vectors [rows, DIM] float32 unit, a sampler of fresh points from the same distribution).

    Zipf-sized clusters; inside a cluster a point is its centre plus a spread along a random subspace of
    `intrinsic` dimensions and a little isotropic noise (cosine to the centre ~0.85). Embeddings of a trained
    model have a low intrinsic dimension; `intrinsic=0` spreads points isotropically over all 256
    dimensions instead: the worst case for any nearest-neighbour index (near-ties within every cluster).
    """
    sampler = Sampler(seed, rows, intrinsic, clusters)
    out = np.empty((rows, DIM), np.float32)
    for start in range(0, rows, 100_000):  # bounded memory
        out[start : start + 100_000] = sampler.draw(min(100_000, rows - start))
    return out, sampler


class Sampler:
    def __init__(self, seed: int, rows: int, intrinsic: int, clusters: int | None) -> None:
        self.rng = np.random.default_rng(seed)
        self.n = clusters or max(50, rows // 500)
        centres = self.rng.standard_normal((self.n, DIM)).astype(np.float32)
        self.centres = centres / np.linalg.norm(centres, axis=1, keepdims=True)
        weights = 1.0 / np.arange(1, self.n + 1) ** 0.8
        self.weights = weights / weights.sum()
        self.intrinsic = intrinsic
        if intrinsic:
            # One random basis per cluster: [clusters, intrinsic, DIM].
            basis = self.rng.standard_normal((self.n, intrinsic, DIM)).astype(np.float32)
            self.basis = basis / np.linalg.norm(basis, axis=2, keepdims=True)

    def draw(self, count: int, rng: np.random.Generator | None = None) -> np.ndarray:
        rng = rng or self.rng
        labels = rng.choice(self.n, size=count, p=self.weights)
        if self.intrinsic:
            z = rng.standard_normal((count, self.intrinsic)).astype(np.float32) * (0.55 / np.sqrt(self.intrinsic))
            spread = np.einsum("ni,nid->nd", z, self.basis[labels])
            noise = rng.standard_normal((count, DIM)).astype(np.float32) * (0.1 / np.sqrt(DIM))
            block = self.centres[labels] + spread + noise
        else:
            noise = rng.standard_normal((count, DIM)).astype(np.float32) * (0.6 / np.sqrt(DIM))
            block = self.centres[labels] + noise
        return (block / np.linalg.norm(block, axis=1, keepdims=True)).astype(np.float32)


def copy_binary(vectors: np.ndarray, sites: np.ndarray, half: bool = False, first_id: int = 0) -> bytes:
    """A COPY BINARY stream of (id int4, site int4, embedding vector|halfvec) built without a Python loop."""
    n = len(vectors)
    value = ">f2" if half else ">f4"
    row = np.dtype([("fields", ">i2"), ("id_len", ">i4"), ("id", ">i4"), ("site_len", ">i4"), ("site", ">i4"),
                    ("vec_len", ">i4"), ("dim", ">i2"), ("unused", ">i2"), ("values", value, (DIM,))])
    data = np.zeros(n, row)
    data["fields"], data["id_len"], data["site_len"] = 3, 4, 4
    data["id"], data["site"] = np.arange(first_id, first_id + n), sites
    data["vec_len"] = 4 + DIM * (2 if half else 4)
    data["dim"] = DIM
    data["values"] = vectors.astype(np.float16 if half else np.float32)
    return b"PGCOPY\n\xff\r\n\0" + b"\0" * 8 + data.tobytes() + b"\xff\xff"


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int = 10, mask: np.ndarray | None = None) -> list:
    out = []
    for q in queries:
        scores = vectors @ q
        if mask is not None:
            scores = np.where(mask, scores, -np.inf)
        top = np.argpartition(-scores, k)[:k]
        out.append(set(top[np.argsort(-scores[top])].tolist()))
    return out


# --- database ----------------------------------------------------------------------------------------
def connect(url: str):
    import psycopg
    from pgvector.psycopg import register_vector

    conn = psycopg.connect(url, autocommit=True)
    conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    register_vector(conn)
    return conn


def load(conn, table: str, vectors: np.ndarray, sites: np.ndarray, half: bool = False) -> float:
    kind = "halfvec" if half else "vector"
    conn.execute(f"DROP TABLE IF EXISTS {table}")
    conn.execute(f"CREATE TABLE {table} (id int4 PRIMARY KEY, site int4 NOT NULL, embedding {kind}({DIM}) NOT NULL)")
    started = time.perf_counter()
    with conn.cursor() as cursor:
        for start in range(0, len(vectors), 100_000):
            chunk = copy_binary(vectors[start : start + 100_000], sites[start : start + 100_000], half, start)
            with cursor.copy(f"COPY {table} (id, site, embedding) FROM STDIN WITH (FORMAT BINARY)") as copy:
                copy.write(chunk)
    conn.execute(f"VACUUM ANALYZE {table}")
    return time.perf_counter() - started


def build_index(conn, table: str, half: bool, workers: int, memory: str, m: int = 16, ef_construction: int = 64
                ) -> float:
    ops = "halfvec_cosine_ops" if half else "vector_cosine_ops"
    conn.execute(f"SET maintenance_work_mem = '{memory}'")
    conn.execute(f"SET max_parallel_maintenance_workers = {int(workers)}")
    started = time.perf_counter()
    conn.execute(f"CREATE INDEX {table}_hnsw ON {table} USING hnsw (embedding {ops}) "
                 f"WITH (m = {int(m)}, ef_construction = {int(ef_construction)})")
    return time.perf_counter() - started


def timed_search(conn, table: str, queries: np.ndarray, ef: int, iterative: str, site: int | None = None,
                 half: bool = False) -> tuple[list[float], list[set]]:
    from pgvector import HalfVector

    where = "WHERE site = %s" if site is not None else ""
    sql = f"SELECT id FROM {table} {where} ORDER BY embedding <=> %s LIMIT 10"  # noqa: S608 - our constants
    latencies, found = [], []
    with conn.transaction():
        conn.execute(f"SET LOCAL hnsw.ef_search = {int(ef)}")
        conn.execute(f"SET LOCAL hnsw.iterative_scan = {iterative}")
        for q in queries:
            value = HalfVector(q) if half else q
            params = [site, value] if site is not None else [value]
            started = time.perf_counter()
            rows = conn.execute(sql, params, prepare=True).fetchall()
            latencies.append((time.perf_counter() - started) * 1000)
            found.append({r[0] for r in rows})
    return latencies, found


def recall(found: list[set], truth: list[set]) -> float:
    return float(np.mean([len(f & t) / max(len(t), 1) for f, t in zip(found, truth, strict=True)]))


def verdict(value: float, target: float, lower_is_better: bool = False) -> str:
    ok = value <= target if lower_is_better else value >= target
    return "ok" if ok else "MISSES TARGET"


def filtered(vectors: np.ndarray, sites: np.ndarray, queries: np.ndarray, site_of_query: np.ndarray) -> list:
    """Exact top 10 of each query among the rows of its site."""
    truth: list = [None] * len(queries)
    for site in range(SITES):
        idx = np.nonzero(site_of_query == site)[0]
        if len(idx):
            for i, top in zip(idx.tolist(), exact_top(vectors, queries[idx], mask=sites == site), strict=True):
                truth[i] = top
    return truth


def measure(conn, table: str, queries: np.ndarray, truth: list, filtered_truth: list, efs: list[int],
            site_of_query: np.ndarray, modes: tuple[str, ...], half: bool = False) -> None:
    """Latency and recall@10 unfiltered, then with the site filter (5% of rows) in each iterative-scan mode."""
    log("\nunfiltered, top 10:")
    log(f"  {'ef_search':>9} {'recall@10':>10} {'p50 ms':>8} {'p95 ms':>8}")
    timed_search(conn, table, queries[:20], efs[0], "off", half=half)  # warm the cache
    for ef in efs:
        latencies, found = timed_search(conn, table, queries, ef, "off", half=half)
        r, p95 = recall(found, truth), percentile(latencies, 95)
        log(f"  {ef:>9} {r:>10.3f} {percentile(latencies, 50):>8.2f} {p95:>8.2f}   "
            f"recall {verdict(r, TARGET_RECALL)}, p95 {verdict(p95, TARGET_P95_MS, True)}")
    log(f"\nfiltered (site = s, {100 / SITES:.0f}% of rows), top 10:")
    log(f"  {'ef_search':>9} {'iterative':>14} {'rows back':>9} {'recall@10':>10} {'p50 ms':>8} {'p95 ms':>8}")
    for ef in efs:
        for mode in modes:
            latencies, found = [], []
            for site in range(SITES):
                idx = np.nonzero(site_of_query == site)[0]
                lat, got = timed_search(conn, table, queries[idx], ef, mode, site=site, half=half)
                latencies += lat
                found += list(zip(idx.tolist(), got, strict=True))
            found = [f for _, f in sorted(found, key=lambda p: p[0])]
            back = np.mean([len(f) for f in found])
            r, p95 = recall(found, filtered_truth), percentile(latencies, 95)
            log(f"  {ef:>9} {mode:>14} {back:>9.1f} {r:>10.3f} {percentile(latencies, 50):>8.2f} {p95:>8.2f}"
                + (f"   recall {verdict(r, TARGET_RECALL)}, p95 {verdict(p95, TARGET_P95_MS, True)}"
                   if mode != "off" else ""))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--ef", default="40,100,200,400", help="hnsw.ef_search values to measure")
    ap.add_argument("--intrinsic", type=int, default=16,
                    help="dimensions of the spread inside a cluster (0: isotropic, the worst case)")
    ap.add_argument("--halfvec-rows", type=int, default=None,
                    help="rows of the halfvec table (default: all of --rows; 0 skips it)")
    ap.add_argument("--database", default="bench_search")
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    ap.add_argument("--memory", default="4GB", help="maintenance_work_mem for the index build")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--m", type=int, default=24, help="HNSW m (the app's slide indexes use 24)")
    ap.add_argument("--ef-construction", type=int, default=128, help="HNSW ef_construction (the app: 128)")
    ap.add_argument("--keep", action="store_true", help="keep the tables (default: drop them at the end)")
    args = ap.parse_args(argv)
    efs = [int(x) for x in args.ef.split(",")]
    with bench_database(args.database, separate=True) as url, connect(url) as conn:
        return run(args, efs, conn)


def run(args: argparse.Namespace, efs: list[int], conn) -> int:
    version = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()[0]
    memory = ", ".join(
        f"{name}={conn.execute(f'SHOW {name}').fetchone()[0]}" for name in ("shared_buffers", "effective_cache_size")
    )
    log(f"PostgreSQL {conn.info.server_version}, pgvector {version}, {os.cpu_count()} CPU(s), {memory}; "
        f"rows={args.rows:,} dim={DIM} queries={args.queries}")

    t0 = time.perf_counter()
    vectors, sampler = clustered(args.rows, args.seed, args.intrinsic)
    sites = np.random.default_rng(args.seed + 7).integers(0, SITES, size=args.rows).astype(np.int32)
    queries = sampler.draw(args.queries, np.random.default_rng(args.seed + 1))
    shape = f"intrinsic dimension {args.intrinsic}" if args.intrinsic else "isotropic within clusters"
    log(f"generated {args.rows:,} clustered vectors ({sampler.n} clusters, {shape}) "
        f"in {time.perf_counter() - t0:.1f} s")
    seconds = load(conn, "bench_items", vectors, sites)
    log(f"loaded with binary COPY in {seconds:.1f} s")
    seconds = build_index(conn, "bench_items", False, args.workers, args.memory, args.m, args.ef_construction)
    size = conn.execute("SELECT pg_size_pretty(pg_relation_size('bench_items_hnsw'))").fetchone()[0]
    log(f"HNSW index built in {seconds:.1f} s ({size}; m={args.m}, ef_construction={args.ef_construction}, "
        f"{args.workers} parallel maintenance worker(s), maintenance_work_mem={args.memory})")

    truth = exact_top(vectors, queries)
    # Cross-check the numpy ground truth with PostgreSQL's own exact scan on a few queries.
    exact_ms = []
    with conn.transaction():
        conn.execute("SET LOCAL enable_indexscan = off")
        for i, q in enumerate(queries[:3]):
            started = time.perf_counter()
            rows = conn.execute("SELECT id FROM bench_items ORDER BY embedding <=> %s LIMIT 10", [q]).fetchall()
            exact_ms.append((time.perf_counter() - started) * 1000)
            assert {r[0] for r in rows} == truth[i], "PostgreSQL's exact scan disagrees with numpy"
    log(f"exact scan in PostgreSQL: {statistics.median(exact_ms):.0f} ms per query (agrees with numpy)")

    site_of_query = np.arange(len(queries)) % SITES
    measure(conn, "bench_items", queries, truth, filtered(vectors, sites, queries, site_of_query), efs,
            site_of_query, modes=("off", "relaxed_order"))

    if args.halfvec_rows != 0:
        n = min(args.halfvec_rows or args.rows, args.rows)
        sub = vectors[:n]
        load(conn, "bench_half", sub, sites[:n], half=True)
        seconds = build_index(conn, "bench_half", True, args.workers, args.memory, args.m, args.ef_construction)
        size = conn.execute("SELECT pg_size_pretty(pg_relation_size('bench_half_hnsw'))").fetchone()[0]
        sub_truth = truth if n == args.rows else exact_top(sub, queries)
        fp16_truth = exact_top(sub.astype(np.float16).astype(np.float32), queries)
        log(f"\nhalfvec on the first {n:,} rows (index built in {seconds:.1f} s, {size}): "
            f"exact fp16 ranking recall@10 vs fp32 = {recall(fp16_truth, sub_truth):.3f}; "
            "recall below is against the exact float32 answer")
        measure(conn, "bench_half", queries, sub_truth, filtered(sub, sites[:n], queries, site_of_query), efs,
                site_of_query, modes=("relaxed_order",), half=True)
    if not args.keep:
        conn.execute("DROP TABLE IF EXISTS bench_items, bench_half")
    log(f"\ntotal {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
