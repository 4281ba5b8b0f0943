"""A team's deployed model for the real-size configuration, made the way a team outside this
project would: plain PyTorch and timm, its own preprocessing, then exported.

Trains a small timm network on an ImageFolder tree (the colour Fashion-MNIST of
``scripts/colour_fashion_mnist.py``) with a linear classifier, then writes what a visual-search
team has of its model in production:

- ``old.ts``: TorchScript of the embedding network (images -> embeddings);
- ``old.onnx``: the same network exported to ONNX;
- ``old-train.parquet``, ``old-test.parquet``: its embeddings of every training and test image
  (columns id, embedding, label), ids being the images' paths relative to the tree, as
  ``jobs.ingest`` names them;
- ``preprocessing.json``: the input it reads, for the config's ``old.source.preprocessing``.

    python scripts/realsize_team_model.py --images data/colour-fashion-mnist --out outputs/realsize-team
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import timm
import torch
from PIL import Image
from torch import nn
from torchvision.transforms import v2

PREPROCESSING = {"mode": "RGB", "input_size": 64, "resize": 72, "mean": [0.485, 0.456, 0.406],
                 "std": [0.229, 0.224, 0.225], "interpolation": "bilinear"}


def eval_transform() -> v2.Compose:
    return v2.Compose([v2.PILToTensor(), v2.Resize(PREPROCESSING["resize"], antialias=True),
                       v2.CenterCrop(PREPROCESSING["input_size"]), v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize(PREPROCESSING["mean"], PREPROCESSING["std"])])


def images_of(tree: Path, split: str) -> tuple[list[str], list[Path], list[int], list[str]]:
    classes = sorted(p.name for p in (tree / split).iterdir() if p.is_dir())
    files = sorted((p, label) for label, name in enumerate(classes) for p in (tree / split / name).glob("*.jpg"))
    return [str(p.relative_to(tree)) for p, _ in files], [p for p, _ in files], [y for _, y in files], classes


def embed(network: nn.Module, files: list[Path], device: torch.device, batch: int = 256) -> np.ndarray:
    transform, out = eval_transform(), []
    network.eval()
    with torch.inference_mode():
        for start in range(0, len(files), batch):
            images = torch.stack([transform(Image.open(f).convert("RGB")) for f in files[start : start + batch]])
            out.append(network(images.to(device)).float().cpu().numpy())
    return np.concatenate(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", required=True, help="ImageFolder tree with train/ and test/")
    parser.add_argument("--out", required=True)
    parser.add_argument("--architecture", default="mobilenetv3_small_050")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tree, out = Path(args.images), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ids, files, labels, classes = images_of(tree, "train")
    backbone = timm.create_model(args.architecture, pretrained=False, num_classes=0)
    width = getattr(backbone, "head_hidden_size", None) or backbone.num_features  # what num_classes=0 returns
    network = nn.Sequential(backbone, nn.Linear(width, args.dim)).to(device)
    classifier = nn.Linear(args.dim, len(classes)).to(device)
    optimizer = torch.optim.AdamW([*network.parameters(), *classifier.parameters()], lr=2e-3)
    train = v2.Compose([v2.PILToTensor(), v2.RandomResizedCrop(PREPROCESSING["input_size"], scale=(0.5, 1.0)),
                        v2.RandomHorizontalFlip(), v2.ToDtype(torch.float32, scale=True),
                        v2.Normalize(PREPROCESSING["mean"], PREPROCESSING["std"])])
    started = time.perf_counter()
    for epoch in range(args.epochs):
        network.train()
        order = torch.randperm(len(files))
        for start in range(0, len(files) - 63, 64):
            batch = order[start : start + 64].tolist()
            x = torch.stack([train(Image.open(files[i]).convert("RGB")) for i in batch]).to(device)
            y = torch.tensor([labels[i] for i in batch], device=device)
            loss = nn.functional.cross_entropy(classifier(network(x)), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        print(f"epoch {epoch + 1}: loss {loss.item():.3f} ({time.perf_counter() - started:.0f} s)", flush=True)
    network = network.eval().cpu()  # exported and run on the CPU, as the project reads it
    device = torch.device("cpu")
    example = torch.zeros(2, 3, PREPROCESSING["input_size"], PREPROCESSING["input_size"])
    torch.jit.save(torch.jit.trace(network, example), out / "old.ts")
    torch.onnx.export(network, (example,), out / "old.onnx", dynamo=True, external_data=False,
                      dynamic_shapes=({0: torch.export.Dim("batch")},))
    for split in ("train", "test"):
        split_ids, split_files, split_labels, _ = images_of(tree, split)
        vectors = embed(network, split_files, device)
        pq.write_table(pa.table({"id": split_ids, "embedding": [v.tolist() for v in vectors],
                                 "label": [classes[y] for y in split_labels]}), out / f"old-{split}.parquet")
    (out / "preprocessing.json").write_text(json.dumps(PREPROCESSING, indent=1))
    print(f"{out}: old.ts, old.onnx, old-train.parquet, old-test.parquet ({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
