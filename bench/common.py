"""What the benchmarks share: the measured GEMM rate (their arithmetic floor), their results
files and their sections of ``docs/performance.md``."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

PERFORMANCE = Path("docs/performance.md")
RESULTS = Path("bench/results")


def save_results(name: str, results: dict) -> None:
    """``bench/results/<name>.json``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(results, indent=1))


def write_section(name: str, lines: list[str], path: Path = PERFORMANCE) -> None:
    """Replace (or append) the section ``name``, keeping the other benchmarks' sections."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = "\n".join([start, *lines, end])
    text = path.read_text() if path.is_file() else "# Performance\n\nEach benchmark writes its own section.\n"
    if start in text:
        head, rest = text.split(start, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def gemm_rate(inner: int = 256) -> float:
    """float32 GEMM FLOP/s of this machine (torch.mm of 1,024 x ``inner`` by ``inner`` x 100,000 on
    every core), best of 3."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    a, b = torch.randn(1024, inner), torch.randn(inner, 100_000)
    a @ b
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return 2 * 1024 * inner * 100_000 / best
