"""Benchmark: scoring a gallery streamed from sharded Parquet (``pipeline.score.retrieval.search``)
against a plain matrix-product top-k, on the same data in the same run.

Galleries of 1e4, 1e5 and 1e6 vectors (d = 256, part files of 100,000 rows), 1e4 queries,
k = 100, on the CPU. Each measurement runs in a fresh process so that its peak resident memory
(``ru_maxrss``) is its own, best time of two runs; both read the gallery from the same Parquet
files:

- ``streamed``: the project's search, one shard in memory at a time, per-shard faiss top-k
  merged into one top-k per query;
- ``matmul``: the whole gallery read into memory, then per chunk of 1,024 queries one torch
  matrix product against all of it and ``torch.topk``.

The arithmetic floor is 2 x Q x G x d FLOPs over the GEMM rate measured here (a float32
``torch.mm`` of the same shapes' blocks). Each run also checks that both methods return the same
neighbours (share of the matrix-product top-k found by the streamed search). Results: ``bench/results/scoring.json`` and the
scoring rows of ``docs/performance.md``. Run with ``make bench`` or ``python -m bench.scoring``
(``--sizes 10000 100000`` for a shorter run).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench.common import gemm_rate, save_results, write_section

DIM, QUERIES, K, CLASSES, ROWS_PER_FILE = 256, 10_000, 100, 100, 100_000
TIME_TARGET, MEMORY_TARGET_GIB = 1.2, 6.0  # at 1e6 vectors


def _vectors(rng: np.random.Generator, centers: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.integers(0, len(centers), count)
    return (centers[labels] + rng.normal(scale=0.8, size=(count, DIM))).astype(np.float32), labels


def make_gallery(folder: Path, size: int, seed: int = 0) -> None:
    """A clustered gallery of ``size`` vectors as embeddings Parquet part files (kept if present)."""
    from pipeline.data.embeddings import embeddings_table, write_embeddings

    if (folder / "_COMPLETE").is_file():
        return
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(CLASSES, DIM))
    for part, start in enumerate(range(0, size, ROWS_PER_FILE)):
        vectors, labels = _vectors(rng, centers, min(ROWS_PER_FILE, size - start))
        ids = [f"g{start + i}" for i in range(len(labels))]
        write_embeddings(folder / f"part-{part:05d}.parquet",
                         embeddings_table(ids, labels, vectors, "bench-1", "bench", [str(c) for c in range(CLASSES)]))
    (folder / "_COMPLETE").write_text(str(size))


def make_queries(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Queries around the same class centers as the galleries of ``seed``, drawn apart from them."""
    centers = np.random.default_rng(seed).normal(size=(CLASSES, DIM))
    return _vectors(np.random.default_rng(seed + 1), centers, QUERIES)


def run_streamed(folder: Path) -> tuple[dict, np.ndarray]:
    from pipeline.data.embeddings import open_embeddings
    from pipeline.score import search

    query, labels = make_queries()
    gallery = open_embeddings(folder)
    started = time.perf_counter()
    found = search(query, None, lambda: gallery.shards(ROWS_PER_FILE), K)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "top1": float((found.labels[:, 0] == labels).mean())}, found.positions


def run_matmul(folder: Path) -> tuple[dict, np.ndarray]:
    import pyarrow.parquet as pq
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    query, labels = make_queries()
    started = time.perf_counter()
    table = pq.read_table(sorted(folder.glob("*.parquet")), columns=["label", "embedding"])
    gallery = torch.from_numpy(table.column("embedding").combine_chunks().flatten().to_numpy().reshape(-1, DIM))
    gallery_labels = torch.from_numpy(table.column("label").to_numpy())
    del table
    gallery = torch.nn.functional.normalize(gallery, dim=1)
    queries = torch.nn.functional.normalize(torch.from_numpy(query), dim=1)
    top = []
    with torch.inference_mode():
        for start in range(0, len(queries), 1024):
            top.append(torch.topk(queries[start : start + 1024] @ gallery.T, K, dim=1).indices)
    positions = torch.cat(top)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "top1": float((gallery_labels[positions[:, 0]].numpy() == labels).mean())}, positions.numpy()


def measure(kind: str, folder: Path, repeats: int = 2) -> dict:
    """The fastest of ``repeats`` runs, each in a fresh process, with the highest peak resident
    memory (the machine is shared: the best time is the least disturbed one)."""
    runs = []
    for _ in range(repeats):
        output = subprocess.run([sys.executable, "-m", "bench.scoring", "--measure", kind, "--gallery", str(folder)],
                                capture_output=True, text=True, check=True)
        runs.append(json.loads(output.stdout.strip().splitlines()[-1]))
    return {**min(runs, key=lambda run: run["seconds"]), "peak_gib": max(run["peak_gib"] for run in runs)}


def agreement(folder: Path) -> float:
    """Share of the matrix-product top-k that the streamed search returned too (1.0: the same
    neighbours, up to ties)."""
    streamed, matmul = np.load(folder / "streamed.npy"), np.load(folder / "matmul.npy")
    return float(np.mean([len(np.intersect1d(a, b)) / K for a, b in zip(streamed, matmul)]))


def write_markdown(results: dict) -> None:
    """The scoring section of ``docs/performance.md``."""
    rows = ["## Scoring (bench/scoring.py)", "",
            f"{results['machine']}; {QUERIES:,} queries, d = {DIM}, k = {K}; measured {results['date']} "
            f"(`make bench`). GEMM rate {results['gemm_gflops']:.0f} GFLOP/s (torch.mm, 1,024 x 256 by 256 x "
            "100,000, best of 3); floor = 2 Q G d / that rate, so a kernel faster than that torch.mm can "
            "come in under it.", "",
            f"| gallery | streamed (s) | matmul top-k (s) | ratio (target <= {TIME_TARGET} at 1e6) | floor (s) "
            f"| streamed / floor | peak memory streamed / matmul (GiB) (target < {MEMORY_TARGET_GIB:g} at 1e6) "
            "| same top-k as matmul |",
            "|---|---|---|---|---|---|---|---|"]
    for case in results["cases"]:
        rows.append(f"| {case['gallery']:,} | {case['streamed']['seconds']:.1f} | {case['matmul']['seconds']:.1f} "
                    f"| **{case['ratio']:.2f}** | {case['floor_seconds']:.1f} | {case['streamed']['seconds'] / case['floor_seconds']:.1f}x "
                    f"| {case['streamed']['peak_gib']:.2f} / {case['matmul']['peak_gib']:.2f} | {case['topk_agreement']:.5f} |")
    write_section("scoring", rows)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.scoring", description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--data", type=Path, default=Path("outputs/bench/galleries"))
    parser.add_argument("--measure", choices=["streamed", "matmul"], help=argparse.SUPPRESS)
    parser.add_argument("--gallery", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        result, positions = (run_streamed if args.measure == "streamed" else run_matmul)(args.gallery)
        np.save(args.gallery / f"{args.measure}.npy", positions)
        result["peak_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(json.dumps(result))
        return
    rate = gemm_rate(DIM)
    cases = []
    for size in args.sizes:
        folder = args.data / f"g{size}"
        make_gallery(folder, size)
        case = {"gallery": size, "streamed": measure("streamed", folder), "matmul": measure("matmul", folder),
                "floor_seconds": 2 * QUERIES * size * DIM / rate}
        case["ratio"] = case["streamed"]["seconds"] / case["matmul"]["seconds"]
        case["topk_agreement"] = agreement(folder)
        cases.append(case)
        print(f"gallery {size:>9,}: streamed {case['streamed']['seconds']:7.1f} s ({case['streamed']['peak_gib']:.2f} GiB), "
              f"matmul {case['matmul']['seconds']:7.1f} s ({case['matmul']['peak_gib']:.2f} GiB), ratio {case['ratio']:.2f}, "
              f"floor {case['floor_seconds']:.1f} s", flush=True)
    results = {"date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} CPU cores", "gemm_gflops": rate / 1e9,
               "cases": cases}
    save_results("scoring", results)
    write_markdown(results)


if __name__ == "__main__":
    main()
