"""Write an ImageFolder tree from Fashion-MNIST, to try `make demo DATA=...` on a tree of files.

    PYTHONPATH=. python scripts/make_imagefolder.py --out /tmp/imgfolder --per-class 400 --size 32

Takes the first --per-class training images of each class, as RGB JPEGs of --size pixels, in
one sub-folder per class.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from pipeline.data.importers import read_idx

NAMES = ["tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--out", required=True)
    parser.add_argument("--per-class", type=int, default=400)
    parser.add_argument("--size", type=int, default=32)
    args = parser.parse_args()
    images = read_idx(Path(args.source) / "train-images-idx3-ubyte.gz")
    labels = read_idx(Path(args.source) / "train-labels-idx1-ubyte.gz")
    written = dict.fromkeys(range(len(NAMES)), 0)
    for index, (image, label) in enumerate(zip(images, labels)):
        if written[label] == args.per_class:
            continue
        folder = Path(args.out) / NAMES[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).convert("RGB").resize((args.size, args.size)).save(folder / f"{index}.jpg")
        written[label] += 1
    print(f"{sum(written.values())} images in {args.out}")


if __name__ == "__main__":
    main()
