"""Benchmark: a gallery of 1e7 vectors (d = 128) in a faiss IVF-PQ index on this machine, against
exact search of the same gallery in the same run.

The gallery is synthetic and clustered (1,000 centers, unit vectors, cosine as inner product),
drawn chunk by chunk from seeded generators, so that it is never held whole: the index is built
from the chunks, and exact search (faiss ``IndexFlatIP`` per chunk, merged per query with
``faiss.ResultHeap``) draws them again; its time counts the searches and merges only.
Measured: training and adding time, the index's size (serialized) against the raw float32
gallery, the process's peak memory, and for ``nprobe`` of 16 and 64 the queries per second and
recall@10 against exact search on a sample of 1,000 queries (drawn like the gallery, not from
it), with exact search's own queries per second.
Results: ``bench/results/ivfpq_scale.json`` and its section of ``docs/performance.md``. Run with
``make bench`` or ``python -m bench.ivfpq_scale`` (``--size 1000000`` for a shorter run).
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import faiss
import numpy as np

from bench.common import save_results, write_section

DIM, CENTERS, CHUNK, QUERIES, K = 128, 1_000, 500_000, 1_000, 10
PQ_SUBQUANTIZERS, PQ_BITS, TRAIN_SAMPLE = 64, 8, 200_000  # 64 bytes a vector: 16 gave recall@10 0.38 at 2e5


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _draw(centers: np.ndarray, count: int, seed: int) -> np.ndarray:
    """``count`` unit vectors around random centers, the same for the same seed."""
    rng = np.random.default_rng(seed)
    return _unit(centers[rng.integers(0, len(centers), count)] + rng.normal(scale=0.08, size=(count, DIM))
                 ).astype(np.float32)


def _chunks(centers: np.ndarray, size: int):
    """The gallery, chunk by chunk (chunk ``i`` drawn with seed ``1000 + i``)."""
    for number, start in enumerate(range(0, size, CHUNK)):
        yield start, _draw(centers, min(CHUNK, size - start), 1000 + number)


def exact_search(centers: np.ndarray, size: int, queries: np.ndarray) -> tuple[np.ndarray, float]:
    """The exact top-``K`` gallery positions of each query, and the seconds its searches and
    merges took (drawing the chunks again and copying them into flat indexes not counted)."""
    heap, seconds = faiss.ResultHeap(len(queries), K, keep_max=True), 0.0
    for start, chunk in _chunks(centers, size):
        flat = faiss.IndexFlatIP(DIM)
        flat.add(chunk)
        started = time.perf_counter()
        distances, positions = flat.search(queries, K)
        heap.add_result(distances, np.where(positions >= 0, positions + start, -1))
        seconds += time.perf_counter() - started
    heap.finalize()
    return heap.I, seconds


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    """Share of the exact top-``K`` that the index returned."""
    return float(np.mean([len(np.intersect1d(a, b)) / K for a, b in zip(found, exact)]))


def run(size: int) -> dict:
    centers = _unit(np.random.default_rng(0).normal(size=(CENTERS, DIM)))
    nlist = max(256, 2 ** int(np.ceil(np.log2(np.sqrt(size)))))  # sqrt(N) up to a power of two: 4,096 at 1e7
    index = faiss.IndexIVFPQ(faiss.IndexFlatIP(DIM), DIM, nlist, PQ_SUBQUANTIZERS, PQ_BITS, faiss.METRIC_INNER_PRODUCT)
    started = time.perf_counter()
    index.train(_draw(centers, min(TRAIN_SAMPLE, size), 1))
    trained = time.perf_counter() - started
    started = time.perf_counter()
    for _, chunk in _chunks(centers, size):
        index.add(chunk)
    added = time.perf_counter() - started
    index_bytes = faiss.serialize_index(index).nbytes
    queries = _draw(centers, QUERIES, 2)
    exact, exact_seconds = exact_search(centers, size, queries)
    probes = []
    for nprobe in (16, 64):
        index.nprobe = nprobe
        index.search(queries[:10], K)  # warm
        started = time.perf_counter()
        _, found = index.search(queries, K)
        seconds = time.perf_counter() - started
        probes.append({"nprobe": nprobe, "queries_per_s": QUERIES / seconds, "recall_at_10": recall(found, exact)})
    return {"size": size, "dim": DIM, "nlist": nlist, "pq": f"{PQ_SUBQUANTIZERS}x{PQ_BITS} bits",
            "train_seconds": trained, "add_seconds": added, "index_bytes": index_bytes,
            "raw_bytes": size * DIM * 4, "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "exact_queries_per_s": QUERIES / exact_seconds, "probes": probes}


def write_markdown(result: dict) -> None:
    gib = 2**30
    recalls = {probe["recall_at_10"] for probe in result["probes"]}
    same_recall = (" Recall is the same at every nprobe: the codes, not the lists probed, limit it."
                   if len(recalls) == 1 else "")
    rows = ["## A gallery of 1e7 vectors in IVF-PQ (bench/ivfpq_scale.py)", "",
            f"{result['machine']}; {result['size']:,} synthetic unit vectors (d = {result['dim']}, {CENTERS:,} "
            f"clusters), IVF{result['nlist']},PQ {result['pq']} (inner product); {QUERIES:,} queries drawn like "
            f"the gallery, k = {K}; measured {result['date']} (`python -m bench.ivfpq_scale`, part of `make bench`: "
            f"{result['total_seconds'] / 60:.1f} min).{same_recall}", "",
            f"Train {result['train_seconds']:.0f} s ({min(TRAIN_SAMPLE, result['size']):,} vectors), add "
            f"{result['add_seconds']:.0f} s; index {result['index_bytes'] / gib:.2f} GiB against "
            f"{result['raw_bytes'] / gib:.2f} GiB of raw float32 vectors "
            f"(**{result['index_bytes'] / result['raw_bytes']:.3f}**); the process's peak memory "
            f"{result['peak_rss_bytes'] / gib:.2f} GiB.", "",
            "| search | queries/s | against exact search | recall@10 against exact search |", "|---|---|---|---|",
            f"| exact (flat, chunk by chunk) | {result['exact_queries_per_s']:.1f} | 1.0 | 1.000 |"]
    for probe in result["probes"]:
        speedup = probe["queries_per_s"] / result["exact_queries_per_s"]
        rows.append(f"| IVF-PQ, nprobe {probe['nprobe']} | {probe['queries_per_s']:.0f} | **{speedup:.0f}x** | "
                    f"{probe['recall_at_10']:.3f} |")
    write_section("ivfpq_scale", rows)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ivfpq_scale", description=__doc__)
    parser.add_argument("--size", type=int, default=10_000_000)
    args = parser.parse_args()
    started = time.perf_counter()
    result = run(args.size)
    result.update(date=time.strftime("%Y-%m-%d"), machine=f"{os.cpu_count()} CPU cores",
                  total_seconds=time.perf_counter() - started)
    print(result, flush=True)
    save_results("ivfpq_scale", result)
    write_markdown(result)


if __name__ == "__main__":
    main()
