"""Real-size images for the real-size configuration: Fashion-MNIST upscaled to colour JPEGs.

No photo dataset installs on these machines (only Debian's Fashion-MNIST does), so the
real-size configuration (``configs/realsize.yaml``) trains on Fashion-MNIST made to look less
like itself: each 28 px image upscaled (bicubic) to ``--size`` px, its garment painted in a colour
and laid on a background of another, both drawn per image, with mild noise, written as a JPEG
into an ImageFolder tree (``train/<class>/``, ``test/<class>/``) that ``jobs.ingest`` reads
as any folder of photos. Seeded: the same command writes the same files.

    python scripts/colour_fashion_mnist.py --out data/colour-fashion-mnist --size 112 --train 12000 --test 2000
"""

from __future__ import annotations

import argparse
import colorsys
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.data.importers import FASHION_MNIST_CLASSES, read_idx

SOURCE = Path("/usr/share/datasets/fashion-mnist")


def colour_image(pixels: np.ndarray, size: int, rng: np.random.Generator) -> Image.Image:
    """One gray image [28, 28] as an RGB image of ``size``: garment and background in colours
    of their own, mixed by the gray level, with noise."""
    alpha = np.asarray(Image.fromarray(pixels).resize((size, size), Image.BICUBIC), dtype=np.float32)[..., None] / 255
    garment = np.array(colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.4, 1.0), rng.uniform(0.5, 1.0)))
    background = np.array(colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.0, 0.5), rng.uniform(0.0, 1.0)))
    image = (1 - alpha) * background + alpha * garment + rng.normal(0, 0.03, (size, size, 3))
    return Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="ImageFolder tree to write")
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--train", type=int, default=12_000, help="training images (the first of Fashion-MNIST's)")
    parser.add_argument("--test", type=int, default=2_000, help="test images")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    for split, prefix, count in (("train", "train", args.train), ("test", "t10k", args.test)):
        images = read_idx(SOURCE / f"{prefix}-images-idx3-ubyte.gz")[:count]
        labels = read_idx(SOURCE / f"{prefix}-labels-idx1-ubyte.gz")[:count]
        for index, (pixels, label) in enumerate(zip(images, labels)):
            folder = Path(args.out) / split / FASHION_MNIST_CLASSES[label].replace("/", "-")
            folder.mkdir(parents=True, exist_ok=True)
            colour_image(pixels, args.size, rng).save(folder / f"{split}-{index:05d}.jpg", quality=90)
    print(f"{args.out}: {args.train} training and {args.test} test images of {args.size} px")


if __name__ == "__main__":
    main()
