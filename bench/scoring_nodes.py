"""Benchmark: the compatibility matrix scored in Ray tasks (``score.in_ray``) on a `ray start`
cluster of one node, then of two, against one process scoring the pairs one after the other, on
the same sets in the same run.

Four models' sets of 10,000 vectors (d = 128, 10 classes): 16 pairs, each with top-1/5 and the full
ranking's mAP. The nodes run on this machine with one CPU each (``ray start --num-cpus 1``), so
two nodes can at best double one node's rate; on a real cluster each node brings its own cores.
Each measurement runs its driver in a fresh process joined to the cluster, best of two runs.
Every run checks that its report equals the one process's. Results: ``bench/results/
scoring_nodes.json`` and its section of ``docs/performance.md``. Run with ``make bench`` or
``python -m bench.scoring_nodes``.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bench.common import save_results, write_section

MODELS, ROWS, DIM, CLASSES = 4, 10_000, 128, [f"c{i}" for i in range(10)]
RAY = str(Path(sys.executable).with_name("ray"))
PORT = 6393
NODE = ["--num-cpus", "1", "--node-ip-address", "127.0.0.1", "--object-store-memory", str(300 * 2**20),
        "--disable-usage-stats"]


def write_sets(folder: Path) -> list[Path]:
    """``MODELS`` sets of one gallery: each model its own noisy encoding of shared class centers."""
    from pipeline.data.embeddings import embeddings_table, write_embeddings

    rng = np.random.default_rng(0)
    labels = rng.integers(0, len(CLASSES), ROWS)
    centers = rng.normal(size=(len(CLASSES), DIM))
    ids = [f"item-{i:05d}" for i in range(ROWS)]
    paths = []
    for model in range(MODELS):
        vectors = centers[labels] + (1.5 + 0.2 * model) * rng.normal(size=(ROWS, DIM))
        paths.append(folder / f"m{model}")
        write_embeddings(paths[-1] / "part-00000.parquet",
                         embeddings_table(ids, labels, vectors, f"m{model}-card", f"m{model}", CLASSES))
    return paths


def score(paths: list[Path], in_ray: bool) -> tuple[float, pd.DataFrame]:
    """Seconds to score every pair, and the table."""
    from pipeline.config import ScoreConfig
    from pipeline.data.embeddings import open_embeddings
    from pipeline.score import MatrixEntry, MatrixRoles, score_all_pairs

    entries = {path.name: MatrixEntry.plain(path.name, open_embeddings(path), "m0") for path in paths}
    started = time.perf_counter()
    table = score_all_pairs(entries, MatrixRoles(old="m0"), ScoreConfig(in_ray=in_ray, bootstrap_resamples=0))
    return time.perf_counter() - started, table


def drive(address: str, folder: Path, out: Path) -> None:
    """One measurement on the cluster at ``address`` (a fresh driver process)."""
    import ray

    ray.init(address=address, runtime_env={"env_vars": {"PYTHONPATH": str(Path.cwd())}})
    seconds, table = score(sorted(folder.glob("m*")), in_ray=True)
    table.to_parquet(out)
    out.with_suffix(".json").write_text(json.dumps({"seconds": seconds}))


def measured(env: dict, folder: Path, work: Path, name: str, expected: pd.DataFrame) -> float:
    """Best seconds of two driver runs, each checked against the one process's report."""
    best = float("inf")
    for attempt in range(2):
        out = work / f"{name}-{attempt}.parquet"
        subprocess.run([sys.executable, "-m", "bench.scoring_nodes", "--drive", f"127.0.0.1:{PORT}", str(folder),
                        str(out)], env=env, check=True)
        pd.testing.assert_frame_equal(pd.read_parquet(out), expected, check_exact=False, rtol=0, atol=1e-12)
        best = min(best, json.loads(out.with_suffix(".json").read_text())["seconds"])
    return best


def run() -> dict:
    running = subprocess.run(["pgrep", "-f", "raylet"], capture_output=True, text=True).stdout.split()
    if running:
        raise RuntimeError(f"Ray runs on this machine (raylet pids {running}): this benchmark starts its own `ray "
                           "start` nodes and ends with `ray stop`, which would stop it too; stop it first")
    work = Path(tempfile.mkdtemp(prefix="bench-scoring-nodes-"))
    node_dirs = [tempfile.mkdtemp(prefix="ray-bench-head-"), tempfile.mkdtemp(prefix="ray-bench-node-")]
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
           "PYTHONPATH": str(Path.cwd())}
    try:
        folder = work / "sets"
        paths = write_sets(folder)
        alone, expected = score(paths, in_ray=False)
        expected.to_parquet(work / "alone.parquet")
        expected = pd.read_parquet(work / "alone.parquet")
        subprocess.run([RAY, "start", "--head", "--port", str(PORT), "--temp-dir", node_dirs[0], "--include-dashboard",
                        "false", *NODE], env=env, check=True, capture_output=True)
        one = measured(env, folder, work, "one-node", expected)
        subprocess.run([RAY, "start", "--address", f"127.0.0.1:{PORT}", "--temp-dir", node_dirs[1], *NODE], env=env,
                       check=True, capture_output=True)
        two = measured(env, folder, work, "two-nodes", expected)
    finally:
        subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True)
        for path in (work, *node_dirs):
            shutil.rmtree(path, ignore_errors=True)
    pairs = MODELS * MODELS
    return {"pairs": pairs, "rows": ROWS, "dim": DIM, "one_process_s": alone, "one_node_s": one, "two_nodes_s": two,
            "pairs_per_s": {"one process": pairs / alone, "one node": pairs / one, "two nodes": pairs / two},
            "two_nodes_vs_one": one / two, "cpus": os.cpu_count(), "commit": commit()}


def commit() -> str:
    """The checkout measured (-dirty with uncommitted changes)."""
    return subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True).stdout.strip()


def write_markdown(results: dict) -> None:
    rate = results["pairs_per_s"]
    write_section("scoring_nodes", [
        "## The matrix scored across Ray nodes (bench/scoring_nodes.py)", "",
        f"{results['pairs']} pairs of {results['rows']:,}-vector sets (d = {results['dim']}; top-1/5 and the full "
        "ranking's mAP), scored in Ray tasks (`score.in_ray`) on a `ray start` cluster of one node, then two, of one "
        f"CPU each on this {results['cpus']}-core machine, against one process scoring them one after the other "
        f"(its BLAS on every core). Best of two runs, at {results['commit']}; every run's report equals the one "
        "process's.", "",
        "| scoring | seconds | pairs/s |", "|---|---|---|",
        f"| one process | {results['one_process_s']:.1f} | {rate['one process']:.2f} |",
        f"| Ray tasks, one node | {results['one_node_s']:.1f} | {rate['one node']:.2f} |",
        f"| Ray tasks, two nodes | {results['two_nodes_s']:.1f} | {rate['two nodes']:.2f} |", "",
        f"Two nodes against one: **{results['two_nodes_vs_one']:.2f}x** (at most 2x: one CPU each)."])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--drive", nargs=3, metavar=("ADDRESS", "SETS", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.drive:
        drive(args.drive[0], Path(args.drive[1]), Path(args.drive[2]))
        return
    results = run()
    save_results("scoring_nodes", results)
    write_markdown(results)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
