"""Benchmark: the cost of one training step of each method against independent training.

The step the Ray Train workers run (``pipeline.compat.steps.optimizer_step`` on ``TrainingObjective``),
without Ray, on the demo's batch (128 images of 28 x 28, 10 classes), on the CPU with every
core, for two backbones (128-d, CosFace): the demo's small CNN and the ResNet-18 of the backbone
scenario (``configs/scenarios/backbone.yaml``). LCE in every manner and BCT need no forward pass
of the old model, so their step should cost at most 1.05x the independent step; L2 runs the
frozen old model forward on every batch and shows what that costs. A learned transformation adds
a fixed cost per step whatever the backbone; the two backbones show how much of a step it is.

Methods are measured in interleaved rounds (each round times a block of steps of every method
in turn) so that the machine's drift hits them alike; a method's figure is its fastest block,
since other tenants' load on this shared machine only ever adds time.
The arithmetic floor is the step's FLOPs (forward + backward, counted by
``torch.utils.flop_counter``) over the measured GEMM rate. Results:
``bench/results/training_step.json`` and its section of ``docs/performance.md``.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.common import gemm_rate, save_results, write_section
from pipeline.compat.methods import Method, method_named
from pipeline.compat.objectives import TrainingObjective
from pipeline.compat.statistics import compute_old_space_stats
from pipeline.compat.steps import optimizer_and_schedule, optimizer_step
from pipeline.config import CompatConfig, HeadConfig, ModelConfig, TransformConfig
from pipeline.model.heads import build_head
from pipeline.model.networks import EmbeddingModel
from pipeline.model.transformations import build_transforms

METHODS = ("independent", "lce_direct", "lce_backward", "lce_forward", "lce_bidirectional", "bct", "l2")
TARGET = 1.05  # LCE and BCT steps against the independent step
HEAD = HeadConfig(kind="cosface", scale=16, margin=0.1)
BACKBONES = {  # name: (model, rounds, steps per block); fewer steps for the slower backbone
    "small CNN": (ModelConfig(architecture="small_cnn", embedding_dim=128, head=HEAD), 7, 20),
    "ResNet-18": (ModelConfig(architecture="resnet18", stem_stride=4, embedding_dim=128, head=HEAD), 7, 6),
}
CLASSES = [str(c) for c in range(10)]
BATCH = 128


def has_target(method: Method) -> bool:
    """The target holds for methods with a compatibility term and no old forward pass (LCE, BCT)."""
    return method.needs_old_model and not method.needs_old_forward


def make_step(method: str, config: ModelConfig, images: torch.Tensor, labels: torch.Tensor):
    """A closure running one optimisation step of ``method`` on the fixed batch."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    dim = config.embedding_dim
    old_features = rng.normal(size=(2000, dim)) + np.repeat(rng.normal(size=(10, dim)), 200, 0)
    stats = compute_old_space_stats(old_features, np.repeat(np.arange(10), 200), CLASSES, CLASSES[:5])
    spec = method_named(method)
    old_head = build_head(config.head, dim, len(CLASSES)) if spec.needs_old_classifier else None
    old_embedder = EmbeddingModel(config, 1, 5).embedder if spec.needs_old_forward else None
    objective = TrainingObjective(spec, CompatConfig(), stats if spec.needs_statistics else None, old_head, old_embedder)
    model = EmbeddingModel(config, 1, len(CLASSES), build_transforms(spec.trains, dim, dim, TransformConfig()))
    model.train()
    optimizer, scheduler = optimizer_and_schedule(model.parameters(), 1e-3, 0.05, total_steps=10_000)
    totals: dict[str, float] = {}
    # the forward manners read the batch's old features by id: a lookup, here a fixed tensor
    batch_old = torch.randn(len(labels), dim) if spec.needs_old_features else None

    def step() -> None:
        features, logits = model(images, labels)
        terms = objective(features.float(), logits.float(), labels, model.head.weight, model.transforms, images=images,
                          old_features=batch_old)
        optimizer_step(terms, optimizer, scheduler, totals, lambda: method)

    return step


def step_flops(step) -> int:
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def run(config: ModelConfig, rounds: int, steps: int, rate: float) -> dict:
    """Each method's step on ``config``: the fastest of ``rounds`` interleaved blocks of ``steps``."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(BATCH, 1, 28, 28, generator=generator)
    labels = torch.randint(0, len(CLASSES), (BATCH,), generator=generator)
    steps_of = {method: make_step(method, config, images, labels) for method in METHODS}
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
    seconds = {method: min(times) for method, times in blocks.items()}
    return {"model": config.model_dump(), "rounds": rounds, "steps_per_block": steps,
            "methods": {method: {"seconds_per_step": seconds[method], "ratio": seconds[method] / seconds["independent"],
                                 "gflops_per_step": flops[method] / 1e9, "floor_seconds": flops[method] / rate,
                                 "blocks": blocks[method]} for method in METHODS}}


def write_markdown(results: dict) -> None:
    blocks = "; ".join(f"{name}: {r['rounds']} blocks of {r['steps_per_block']} steps"
                       for name, r in results["backbones"].items())
    rows = ["## Training step (bench/training_step.py)", "",
            f"{results['machine']}; 128-d, CosFace, batch {results['batch']} of 28 x 28, fp32, AdamW; a "
            f"method's figure is its fastest of interleaved blocks of steps ({blocks}); ResNet-18 with stem stride 4; "
            f"measured {results['date']} (`make bench`). Floor = the step's FLOPs (forward + "
            f"backward) / {results['gemm_gflops']:.0f} GFLOP/s (torch.mm, 1,024 x 1,024 by 1,024 x 100,000). LCE's "
            "backward, forward and bidirectional manners also train their transformations (default size: 1 block, "
            "1 path, 256 wide), which the step's FLOPs include.", "",
            f"| backbone | method | ms per step | against independent (target <= {TARGET} for LCE and BCT) | "
            "GFLOP per step | floor (ms) | measured / floor |",
            "|---|---|---|---|---|---|---|"]
    for backbone, result in results["backbones"].items():
        for method, m in result["methods"].items():
            judged = has_target(method_named(method))
            target = (" ok" if m["ratio"] <= TARGET else " **over**") if judged else ""
            rows.append(f"| {backbone} | {method} | {m['seconds_per_step'] * 1e3:.1f} | **{m['ratio']:.3f}**{target} | "
                        f"{m['gflops_per_step']:.2f} | {m['floor_seconds'] * 1e3:.1f} | "
                        f"{m['seconds_per_step'] / m['floor_seconds']:.1f}x |")
    write_section("training_step", rows)


def main() -> None:
    argparse.ArgumentParser(prog="python -m bench.training_step", description=__doc__.split("\n\n")[0]).parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    rate = gemm_rate(1024)  # a large inner dimension: about the best rate the cores reach
    results = {"date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} CPU cores", "batch": BATCH,
               "gemm_gflops": rate / 1e9, "backbones": {}}
    for backbone, (config, rounds, steps) in BACKBONES.items():
        results["backbones"][backbone] = run(config, rounds, steps, rate)
        for method, m in results["backbones"][backbone]["methods"].items():
            print(f"{backbone:10s} {method:18s} {m['seconds_per_step'] * 1e3:7.1f} ms/step  x{m['ratio']:.3f}  "
                  f"floor {m['floor_seconds'] * 1e3:.1f} ms", flush=True)
    save_results("training_step", results)
    write_markdown(results)


if __name__ == "__main__":
    main()
