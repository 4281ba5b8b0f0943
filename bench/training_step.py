"""Benchmark: the cost of one training step of each method against independent training.

The step the Ray Train workers run (``pipeline.steps.optimizer_step`` on ``TrainingObjective``),
without Ray, on the demo's model (small CNN, 128-d, CosFace) and batch (128 images of 28 x 28,
10 classes), on the CPU with every core. LCE in every manner and BCT need no forward pass of
the old model, so their step should cost at most 1.05x the independent step; L2 runs the frozen
old model forward on every batch and shows what that costs.

Methods are measured in interleaved rounds (each round times a block of steps of every method
in turn) so that the machine's drift hits them alike; a method's figure is its median block.
The arithmetic floor is the step's FLOPs (forward + backward, counted by
``torch.utils.flop_counter``) over the measured GEMM rate. Results:
``bench/results/training_step.json`` and its section of ``docs/performance.md``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.common import gemm_rate, save_results, write_section
from pipeline.config import CompatConfig, HeadConfig, ModelConfig, TransformConfig
from pipeline.heads import build_head
from pipeline.losses import TrainingObjective
from pipeline.models import EmbeddingModel
from pipeline.statistics import compute_old_space_stats
from pipeline.steps import optimizer_step
from pipeline.transforms import build_transforms

METHODS = ("independent", "lce_direct", "lce_backward", "lce_forward", "lce_bidirectional", "bct", "l2")
TARGET = 1.05  # issue 7: LCE and BCT steps against the independent step
MODEL = ModelConfig(architecture="small_cnn", embedding_dim=128, head=HeadConfig(kind="cosface", scale=16, margin=0.1))
CLASSES = [str(c) for c in range(10)]
BATCH = 128


def make_step(method: str, images: torch.Tensor, labels: torch.Tensor):
    """A closure running one optimisation step of ``method`` on the fixed batch."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    old_features = rng.normal(size=(2000, MODEL.embedding_dim)) + np.repeat(rng.normal(size=(10, MODEL.embedding_dim)), 200, 0)
    stats = compute_old_space_stats(old_features, np.repeat(np.arange(10), 200), CLASSES, CLASSES[:5])
    old_head = build_head(MODEL.head, MODEL.embedding_dim, len(CLASSES)) if method == "bct" else None
    old_embedder = EmbeddingModel(MODEL, 1, 5).embedder if method == "l2" else None
    objective = TrainingObjective(method, CompatConfig(), None if method in ("independent", "l2") else stats,
                                  old_head, old_embedder)
    model = EmbeddingModel(MODEL, 1, len(CLASSES), build_transforms(method, MODEL.embedding_dim, MODEL.embedding_dim,
                                                                    TransformConfig()))
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    totals: dict[str, float] = {}

    def step() -> None:
        features, logits = model(images, labels)
        terms = objective(features.float(), logits.float(), labels, model.head.weight, model.transforms, images=images)
        optimizer_step(terms, optimizer, scheduler, totals, lambda: method)

    return step


def step_flops(step) -> int:
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def run(rounds: int, steps: int) -> dict:
    torch.set_num_threads(os.cpu_count() or 1)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(BATCH, 1, 28, 28, generator=generator)
    labels = torch.randint(0, len(CLASSES), (BATCH,), generator=generator)
    steps_of = {method: make_step(method, images, labels) for method in METHODS}
    flops = {method: step_flops(step) for method, step in steps_of.items()}
    for step in steps_of.values():  # warm-up: allocator, kernels
        for _ in range(3):
            step()
    blocks: dict[str, list[float]] = {method: [] for method in METHODS}
    for _ in range(rounds):
        for method, step in steps_of.items():
            started = time.perf_counter()
            for _ in range(steps):
                step()
            blocks[method].append((time.perf_counter() - started) / steps)
    rate = gemm_rate(1024)  # a large inner dimension: about the best rate the cores reach
    seconds = {method: statistics.median(times) for method, times in blocks.items()}
    return {"date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} CPU cores", "batch": BATCH,
            "rounds": rounds, "steps_per_block": steps, "gemm_gflops": rate / 1e9,
            "methods": {method: {"seconds_per_step": seconds[method], "ratio": seconds[method] / seconds["independent"],
                                 "gflops_per_step": flops[method] / 1e9, "floor_seconds": flops[method] / rate,
                                 "blocks": blocks[method]} for method in METHODS}}


def write_markdown(results: dict) -> None:
    rows = ["## Training step (bench/training_step.py)", "",
            f"{results['machine']}; small CNN, 128-d, CosFace, batch {results['batch']} of 28 x 28, fp32; median of "
            f"{results['rounds']} interleaved blocks of {results['steps_per_block']} steps; measured {results['date']} "
            f"(`make bench`). Floor = the step's FLOPs (forward + backward) / {results['gemm_gflops']:.0f} GFLOP/s "
            "(torch.mm, 1,024 x 1,024 by 1,024 x 100,000). LCE's backward, forward and bidirectional manners also "
            "train their transformations (default size), which the step's FLOPs include.", "",
            f"| method | ms per step | against independent (target <= {TARGET} for LCE and BCT) | GFLOP per step "
            "| floor (ms) | measured / floor |",
            "|---|---|---|---|---|---|"]
    for method, m in results["methods"].items():
        target = "" if method in ("independent", "l2") else (" ok" if m["ratio"] <= TARGET else " **over**")
        rows.append(f"| {method} | {m['seconds_per_step'] * 1e3:.1f} | **{m['ratio']:.3f}**{target} | "
                    f"{m['gflops_per_step']:.2f} | {m['floor_seconds'] * 1e3:.1f} | "
                    f"{m['seconds_per_step'] / m['floor_seconds']:.1f}x |")
    write_section("training_step", rows)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.training_step", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=20, help="steps per timed block")
    args = parser.parse_args()
    results = run(args.rounds, args.steps)
    for method, m in results["methods"].items():
        print(f"{method:18s} {m['seconds_per_step'] * 1e3:7.1f} ms/step  x{m['ratio']:.3f}  floor {m['floor_seconds'] * 1e3:.1f} ms")
    save_results("training_step", results)
    write_markdown(results)


if __name__ == "__main__":
    main()
