"""Benchmark: what Ray Train costs. ``jobs.train`` with one worker against a plain PyTorch loop on
the same model, data, batch, optimizer and threads, in the same run.

The demo's new model (small CNN, 128-d, CosFace, independent training, batch 128, AdamW with
one-cycle, 2 threads) on the 60,000 training images of Fashion-MNIST, 2 epochs each. Samples/s
is an epoch's images over its wall time, as the Ray Train worker reports it (``images_per_s``
of the last epoch); the plain loop times its epochs the same way. The plain loop runs before
and after ``jobs.train`` and its figure is the mean of the two, so that drift hits both sides.
Ray Train's fixed cost (starting Ray, the worker group, reading the data, checkpoints, MLflow,
the artifact) is reported as the command's wall time beyond its epochs. The arithmetic floor is
the step's FLOPs (forward + backward) per image over the measured GEMM rate. Results:
``bench/results/ray_train.json`` and its section of ``docs/performance.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.common import gemm_rate, save_results, write_section
from pipeline.compat.objectives import TrainingObjective
from pipeline.compat.steps import optimizer_and_schedule, optimizer_step
from pipeline.config import DataConfig, TrainConfig
from pipeline.data.dataset import read_dataset_info
from pipeline.data.decode import load_split
from pipeline.data.importers import ensure_dataset
from pipeline.model.card import read_card
from pipeline.model.networks import EmbeddingModel
from pipeline.train.training import init_seed

TARGET = 0.9  # jobs.train samples/s against the plain loop
CONFIG = {"name": "bench", "method": "independent", "epochs": 2, "batch_size": 128, "lr": 0.002, "cpus_per_worker": 2,
          "model": {"architecture": "small_cnn", "embedding_dim": 128, "head": {"kind": "cosface", "scale": 16,
                                                                                 "margin": 0.1}}}


def plain_loop(dataset: Path, cfg: TrainConfig) -> dict:
    """The worker's computation without Ray: same data, model, objective, optimizer and order."""
    torch.set_num_threads(int(cfg.cpus_per_worker))
    torch.manual_seed(init_seed(cfg))
    started = time.perf_counter()
    info = read_dataset_info(dataset)
    _, images, labels = load_split(dataset, "train")
    images, labels = torch.from_numpy(images), torch.from_numpy(labels)
    model = EmbeddingModel(cfg.model, info.channels, len(info.classes))
    objective = TrainingObjective(cfg.method, cfg.compat)
    steps = len(images) // cfg.batch_size
    optimizer, scheduler = optimizer_and_schedule(model.parameters(), cfg.lr, cfg.weight_decay, cfg.epochs * steps)
    epochs = []
    for epoch in range(cfg.epochs):
        model.train()
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch))
        totals: dict[str, float] = {}
        epoch_started = time.perf_counter()
        for step in range(steps):
            batch = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            x, y = images[batch], labels[batch]
            features, logits = model(x, y)
            terms = objective(features, logits, y, model.head.weight, model.transforms, images=x)
            optimizer_step(terms, optimizer, scheduler, totals, lambda: f"plain loop step {step}")
        epochs.append(steps * cfg.batch_size / (time.perf_counter() - epoch_started))
    return {"images_per_s": epochs[-1], "epochs_images_per_s": epochs, "seconds": time.perf_counter() - started}


def ray_train(dataset: Path, config_path: Path, folder: Path) -> dict:
    """``python -m jobs.train`` in its own process (it starts its own local Ray)."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "jobs.train", "--config", str(config_path), "--dataset", str(dataset),
                    "--out", str(folder / "artifact"), "--storage-path", str(folder / "ray"),
                    "--tracking-uri", f"sqlite:///{folder / 'mlflow.db'}"], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    metrics = read_card(folder / "artifact").metrics
    return {"images_per_s": metrics["images_per_s"], "seconds": seconds}


def step_flops_per_image(dataset: Path, cfg: TrainConfig) -> float:
    info = read_dataset_info(dataset)
    model = EmbeddingModel(cfg.model, info.channels, len(info.classes))
    objective = TrainingObjective(cfg.method, cfg.compat)
    x = torch.randn(cfg.batch_size, info.channels, info.image_size, info.image_size)
    y = torch.randint(0, len(info.classes), (cfg.batch_size,))
    with FlopCounterMode(display=False) as counter:
        features, logits = model(x, y)
        objective(features, logits, y, model.head.weight, model.transforms, images=x)["loss"].backward()
    return counter.get_total_flops() / cfg.batch_size


def run(dataset: Path) -> dict:
    cfg = TrainConfig.model_validate(CONFIG)
    with tempfile.TemporaryDirectory(prefix="bench-ray-train-") as scratch:
        folder = Path(scratch)
        (folder / "config.json").write_text(json.dumps(CONFIG))  # JSON is YAML
        before = plain_loop(dataset, cfg)
        print(f"plain loop: {before['images_per_s']:.0f} images/s", flush=True)
        with_ray = ray_train(dataset, folder / "config.json", folder)
        print(f"jobs.train: {with_ray['images_per_s']:.0f} images/s ({with_ray['seconds']:.0f} s)", flush=True)
        after = plain_loop(dataset, cfg)
        print(f"plain loop: {after['images_per_s']:.0f} images/s", flush=True)
    plain = (before["images_per_s"] + after["images_per_s"]) / 2
    images = read_dataset_info(dataset).rows["train"] // cfg.batch_size * cfg.batch_size * cfg.epochs
    rate = gemm_rate(1024)
    floor = rate / step_flops_per_image(dataset, cfg)
    return {"date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} CPU cores", "config": CONFIG,
            "plain": {"before": before, "after": after, "images_per_s": plain},
            "jobs_train": with_ray, "ratio": with_ray["images_per_s"] / plain,
            "fixed_seconds": with_ray["seconds"] - images / with_ray["images_per_s"],
            "plain_fixed_seconds": (before["seconds"] + after["seconds"]) / 2 - images / plain,
            "gemm_gflops": rate / 1e9, "floor_images_per_s": floor}


def write_markdown(results: dict) -> None:
    plain, ray_run = results["plain"], results["jobs_train"]
    rows = ["## Ray Train overhead (bench/ray_train.py)", "",
            f"{results['machine']}; `jobs.train` with 1 worker (2 CPUs, 2 torch threads) against a plain PyTorch loop "
            "on the same model (small CNN, 128-d, CosFace), data (Fashion-MNIST, 60,000 training images), batch 128, "
            f"AdamW one-cycle, 2 threads; 2 epochs each, the last epoch's images/s; measured {results['date']} "
            f"(`make bench`). Floor = {results['gemm_gflops']:.0f} GFLOP/s (torch.mm) / the step's FLOPs per image.", "",
            f"| | images/s | against the plain loop (target >= {TARGET}) | floor (images/s) | measured / floor "
            "| fixed cost (s) |",
            "|---|---|---|---|---|---|",
            f"| plain loop (mean of before / after: {plain['before']['images_per_s']:.0f} / "
            f"{plain['after']['images_per_s']:.0f}) | {plain['images_per_s']:.0f} | 1 | "
            f"{results['floor_images_per_s']:.0f} | {plain['images_per_s'] / results['floor_images_per_s']:.2f} | "
            f"{results['plain_fixed_seconds']:.0f} (reading the data) |",
            f"| `jobs.train`, 1 worker | {ray_run['images_per_s']:.0f} | **{results['ratio']:.3f}**"
            f"{' ok' if results['ratio'] >= TARGET else ' **under**'} | {results['floor_images_per_s']:.0f} | "
            f"{ray_run['images_per_s'] / results['floor_images_per_s']:.2f} | {results['fixed_seconds']:.0f} "
            f"(of {ray_run['seconds']:.0f} s: Ray, worker group, data, checkpoints, MLflow, artifact) |"]
    write_section("ray_train", rows)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ray_train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, default=None,
                        help="ingested dataset (default: Fashion-MNIST, ingested to data/fashion-mnist if missing)")
    args = parser.parse_args()
    results = run((args.dataset or ensure_dataset(DataConfig(), seed=0)).resolve())
    print(f"ratio {results['ratio']:.3f} (target >= {TARGET}); fixed cost {results['fixed_seconds']:.0f} s")
    save_results("ray_train", results)
    write_markdown(results)


if __name__ == "__main__":
    main()
