"""GPU check: the project's training step, encoding and faiss scoring on one GPU, in a few minutes.

Trains three models for a few hundred steps each with the step the Ray Train workers run
(``pipeline.compat.steps``, autocast at the configured precision): the old model on classes 0-4, then an
independent and an LCE-direct new model on all ten, LCE against the old model's statistics.
Encodes the test split with each, scores every (query, gallery) pair with faiss (the GPU build
when it sees a GPU, else faiss-cpu, as ``pipeline.score.retrieval`` decides) and prints throughput and
the matrix. Needs no Ray: the GPU math is what it checks; ``make demo`` on a GPU node runs the
same code through Ray Train and Ray Data.

    python -m scripts.gpu_check --data /usr/share/datasets/fashion-mnist --steps 300
"""

from __future__ import annotations

import argparse
import json
import time
import zlib
from pathlib import Path

import faiss
import numpy as np
import torch

from pipeline.compat.objectives import TrainingObjective
from pipeline.compat.statistics import compute_old_space_stats
from pipeline.compat.steps import autocast, autocast_dtype, optimizer_step
from pipeline.config import CompatConfig, ModelConfig
from pipeline.data.importers import read_idx
from pipeline.model.networks import EmbeddingModel
from pipeline.score import per_query_metrics, summarize

CLASSES = [str(label) for label in range(10)]
MODEL = ModelConfig(architecture="resnet18", embedding_dim=128)


def load(folder: Path, prefix: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    images = read_idx(folder / f"{prefix}-images-idx3-ubyte.gz")
    labels = read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz")
    pixels = torch.from_numpy(images.astype(np.float32) / 127.5 - 1.0)[:, None]
    return pixels.to(device), torch.from_numpy(labels.astype(np.int64)).to(device)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def train(name: str, images: torch.Tensor, labels: torch.Tensor, objective: TrainingObjective, args,
          device: torch.device) -> tuple[EmbeddingModel, float]:
    """``args.steps`` steps of AdamW + one-cycle; returns the model and its training images/s."""
    torch.manual_seed(zlib.crc32(name.encode()))
    num_classes = int(labels.max()) + 1
    model = EmbeddingModel(MODEL, 1, num_classes).to(device)
    objective = objective.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=args.steps, pct_start=0.15)
    precision = autocast_dtype(args.precision, device)
    scaler = torch.amp.GradScaler(device.type) if precision == torch.float16 else None
    generator = torch.Generator(device=device).manual_seed(0)
    totals: dict[str, float] = {}
    model.train()
    synchronize(device)
    started = time.perf_counter()
    for step in range(args.steps):
        batch = torch.randint(len(images), (args.batch_size,), device=device, generator=generator)
        with autocast(precision, device):
            features, logits = model(images[batch], labels[batch])
        terms = objective(features.float(), logits.float(), labels[batch], model.head.weight)
        optimizer_step(terms, optimizer, scheduler, totals, lambda: f"{name} step {step}", scaler)
    synchronize(device)
    rate = args.steps * args.batch_size / (time.perf_counter() - started)
    print(f"train {name:12s} {args.steps} steps, loss {totals['loss'] / args.steps:.3f}, {rate:,.0f} img/s "
          f"(precision {precision or torch.float32})")
    return model.eval(), rate


@torch.inference_mode()
def encode(model: EmbeddingModel, images: torch.Tensor, device: torch.device) -> tuple[np.ndarray, float]:
    synchronize(device)
    started = time.perf_counter()
    vectors = torch.cat([model.embedder(images[i : i + 2048]).float() for i in range(0, len(images), 2048)])
    synchronize(device)
    return vectors.cpu().numpy(), len(images) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m scripts.gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("/usr/share/datasets/fashion-mnist"),
                        help="folder of the Fashion-MNIST (or MNIST) idx .gz files")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto")
    parser.add_argument("--out", type=Path, default=None, help="write the numbers as JSON here")
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"device {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu (no GPU seen)'}; "
          f"torch {torch.__version__}; faiss {faiss.__version__} sees {faiss.get_num_gpus()} GPU(s)")
    train_images, train_labels = load(args.data, "train", device)
    test_images, test_labels = load(args.data, "t10k", device)

    seen = train_labels < 5
    old, old_rate = train("old", train_images[seen], train_labels[seen], TrainingObjective("independent", CompatConfig()),
                          args, device)
    old_features, _ = encode(old, train_images, device)
    stats = compute_old_space_stats(old_features, train_labels.cpu().numpy(), CLASSES, CLASSES[:5])
    compat = CompatConfig(compactness_margin=0.1)
    models = {"old": old}
    rates = {"old": old_rate}
    for name, objective in (("independent", TrainingObjective("independent", compat)),
                            ("lce_direct", TrainingObjective("lce_direct", compat, stats))):
        models[name], rates[name] = train(name, train_images, train_labels, objective, args, device)

    embeddings, encode_rates = {}, {}
    for name, model in models.items():
        embeddings[name], encode_rates[name] = encode(model, test_images, device)
        print(f"encode {name:12s} {len(test_images)} images, {encode_rates[name]:,.0f} img/s")

    labels, ids = test_labels.cpu().numpy(), np.arange(len(test_labels))
    matrix: dict[str, dict[str, dict[str, float]]] = {}
    started = time.perf_counter()
    for query in models:
        for gallery in models:
            cell = summarize(per_query_metrics(embeddings[query], labels, embeddings[gallery], labels, ids, ids))
            matrix.setdefault(query, {})[gallery] = cell
    score_seconds = time.perf_counter() - started
    print(f"score {len(models) ** 2} pairs of {len(ids)} queries x {len(ids)} gallery in {score_seconds:.1f} s "
          f"(faiss on {'GPU' if faiss.get_num_gpus() else 'CPU'}, mAP over the full ranking on CPU)")
    print("\ntop-1 / mAP (%), rows = query model, columns = gallery model")
    print(f"{'':12s} " + " ".join(f"{name:>15s}" for name in models))
    for query in models:
        cells = [f"{100 * matrix[query][g]['top1']:6.2f} / {100 * matrix[query][g]['map']:5.2f}" for g in models]
        print(f"{query:12s} " + " ".join(f"{cell:>15s}" for cell in cells))
    if args.out:
        args.out.write_text(json.dumps({"device": str(device), "train_img_per_s": rates, "encode_img_per_s": encode_rates,
                                        "score_seconds": score_seconds, "matrix": matrix}, indent=1))


if __name__ == "__main__":
    main()
