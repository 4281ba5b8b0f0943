"""Importers that write the dataset contract (``pipeline.data.dataset``) from the original idx
``.gz`` files of (Fashion-)MNIST or an ImageFolder tree (one sub-folder per class)."""

from __future__ import annotations

import gzip
import io
import json
import logging
import random
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

from pipeline.atomic import write_table_atomic, write_text_atomic
from pipeline.config import DataConfig
from pipeline.data.bad_rows import BadRows, DataError, label_problem
from pipeline.data.dataset import DATASET_SCHEMA, SPLITS, DatasetInfo, ingested_from
from pipeline.data.decode import open_image

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
MAX_DEFAULT_IMAGE_SIZE = 64


def read_idx(path: Path) -> np.ndarray:
    """One idx file (gzipped or not) as a uint8 array: images [N, H, W] or labels [N]."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4:
        raise DataError(f"{path}: truncated idx header")
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise DataError(f"{path}: not an unsigned-byte idx file (magic {data[:4].hex()})")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DataError(f"{path}: expected {int(np.prod(shape))} values for shape {shape}, found {body.size}")
    return body.reshape(shape)


def _find_idx(folder: Path, prefix: str, kind: str) -> Path:
    matches = sorted(folder.glob(f"{prefix}-{kind}-idx*-ubyte*"))
    if not matches:
        raise DataError(f"{folder}: no {prefix}-{kind}-idx*-ubyte[.gz] file")
    return matches[0]


def _idx_class_names(folder: Path, num_classes: int) -> list[str]:
    """``classes.txt`` (one name per line) when present, its labels then checked row by row;
    else Fashion-MNIST's names or the label numbers."""
    listed = folder / "classes.txt"
    if listed.is_file():
        return [line.strip() for line in listed.read_text().splitlines() if line.strip()]
    if "fashion" in str(folder).lower() and num_classes == len(FASHION_MNIST_CLASSES):
        return list(FASHION_MNIST_CLASSES)
    return [str(i) for i in range(num_classes)]


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def is_idx_folder(folder: Path) -> bool:
    return any(folder.glob("train-images-idx*-ubyte*"))


def iter_idx_rows(folder: Path) -> tuple[list[str], dict[str, Iterator[tuple[str, bytes, int | None]]]]:
    """Class names and, per split, rows of an idx folder (``train-*`` and ``t10k-*`` files).

    Rows past the end of a shorter labels file have no label (``None``), rows past the end of
    a shorter images file no image bytes: bad rows, for the ingest's policy to decide.
    """
    arrays = {split: (read_idx(_find_idx(folder, prefix, "images")), read_idx(_find_idx(folder, prefix, "labels")))
              for split, prefix in (("train", "train"), ("test", "t10k"))}
    num_classes = int(max((labels.max() for _, labels in arrays.values() if len(labels)), default=0)) + 1
    classes = _idx_class_names(folder, num_classes)

    def rows(split: str) -> Iterator[tuple[str, bytes, int | None]]:
        images, labels = arrays[split]
        for index in range(max(len(images), len(labels))):
            image = _png(images[index]) if index < len(images) else b""
            yield f"{split}-{index:06d}", image, int(labels[index]) if index < len(labels) else None

    return classes, {split: rows(split) for split in SPLITS}


def iter_imagefolder_rows(
    folder: Path, test_fraction: float, seed: int
) -> tuple[list[str], dict[str, Iterator[tuple[str, bytes, int | None]]]]:
    """Class names and rows of an ImageFolder tree, split per class with a seeded shuffle, each
    split's rows in a seeded order.

    A tree that already has ``train/`` and ``test/`` sub-folders with the same classes keeps
    that split. An image outside every class folder has no label (``None``): a bad row, for the
    ingest's policy to decide.
    """
    presplit = all((folder / s).is_dir() for s in SPLITS)
    roots = {s: folder / s for s in SPLITS} if presplit else {"all": folder}
    class_sets = {name: sorted(p.name for p in root.iterdir() if p.is_dir()) for name, root in roots.items()}
    classes = next(iter(class_sets.values()))
    if not classes:
        raise DataError(f"{folder}: no class sub-folders (expected an ImageFolder tree)")
    if presplit and class_sets["train"] != class_sets["test"]:
        raise DataError(f"{folder}: train and test class folders differ: {sorted(set(class_sets['train']) ^ set(class_sets['test']))}")

    def files_of(root: Path, name: str) -> list[Path]:
        return sorted(p for p in (root / name).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)

    assignment: dict[str, list[tuple[Path, int | None]]] = {s: [] for s in SPLITS}
    for split, root in roots.items():
        assignment["train" if split == "all" else split] += [
            (p, None) for p in sorted(root.iterdir()) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    rng = random.Random(seed)
    for label, name in enumerate(classes):
        if presplit:
            for split in SPLITS:
                assignment[split] += [(p, label) for p in files_of(roots[split], name)]
            continue
        files = files_of(folder, name)
        if not files:
            raise DataError(f"{folder / name}: class folder has no images")
        rng.shuffle(files)
        n_test = max(1, round(len(files) * test_fraction)) if len(files) > 1 else 0
        assignment["test"] += [(p, label) for p in files[:n_test]]
        assignment["train"] += [(p, label) for p in files[n_test:]]

    def rows(split: str) -> Iterator[tuple[str, bytes, int | None]]:
        # In a seeded shuffle, not in path order (class by class): a streamed fit reads its
        # training rows file by file, and a file of one or two classes would make its batches so.
        ordered = sorted(assignment[split], key=lambda item: str(item[0]))
        random.Random(f"{seed}:{split}").shuffle(ordered)
        for path, label in ordered:
            yield str(path.relative_to(folder)), path.read_bytes(), label

    return classes, {split: rows(split) for split in SPLITS}


def ingest(source: str | Path, out: str | Path, test_fraction: float = 0.2, seed: int = 0,
           image_size: int | None = None, rows_per_file: int = 10_000, on_bad_rows: str = "error") -> DatasetInfo:
    """Convert an idx folder or an ImageFolder tree into the Parquet dataset at ``out``.

    Bad rows (image bytes that do not decode, no label, a label outside the label map) stop the
    ingest naming the row (``on_bad_rows="error"``) or are left out and listed in
    ``<out>/bad_rows.json`` (``"skip"``); a split left without rows is an error either way.
    """
    source, out = Path(source), Path(out)
    if not source.is_dir():
        raise DataError(f"{source}: dataset source folder not found")
    if is_idx_folder(source):
        classes, split_rows = iter_idx_rows(source)
    else:
        classes, split_rows = iter_imagefolder_rows(source, test_fraction, seed)
    counts, modes, sizes, bad = {}, set(), [], {}
    (out / "dataset.json").unlink(missing_ok=True)  # the folder is no finished ingest until the end
    for split in SPLITS:
        (out / split).mkdir(parents=True, exist_ok=True)
        for stale in (out / split).glob("*.parquet"):
            stale.unlink()
        bad[split] = BadRows(on_bad_rows, f"{source} ({split} split)")
        batch: list[tuple[str, bytes, int]] = []
        part = 0
        counts[split] = 0
        for row_id, data, label in split_rows[split]:
            try:
                image, problem = open_image(data), label_problem(label, len(classes))
            except DataError as error:
                image, problem = None, str(error)
            if not bad[split].keep(row_id, problem):
                continue
            modes.add("L" if image.mode in ("L", "1", "I;16", "I") else "RGB")
            if len(sizes) < 2000:
                sizes.append(max(image.size))
            batch.append((row_id, data, label))
            if len(batch) == rows_per_file:
                _write_rows(out / split / f"part-{part:05d}.parquet", batch)
                counts[split] += len(batch)
                part, batch = part + 1, []
        if batch:
            _write_rows(out / split / f"part-{part:05d}.parquet", batch)
            counts[split] += len(batch)
        skipped = bad[split].summary()
        write_text_atomic(out / "bad_rows.json", json.dumps({s: b.summary() for s, b in bad.items()}, indent=1))
        if counts[split] == 0:
            detail = f" (all {skipped['skipped']} rows are bad: {skipped['by_problem']}, see {out / 'bad_rows.json'})"
            raise DataError(f"{source}: the {split} split is empty{detail if skipped['skipped'] else ''}")
        if skipped["skipped"]:
            log.warning("ingest: skipped %d bad %s rows %s (listed in %s)", skipped["skipped"], split,
                        skipped["by_problem"], out / "bad_rows.json")
        log.info("ingest: wrote %d %s rows to %s", counts[split], split, out / split)
    size = image_size or min(int(np.median(sizes)), MAX_DEFAULT_IMAGE_SIZE)
    info = DatasetInfo(classes=classes, mode="L" if modes == {"L"} else "RGB", image_size=size, rows=counts)
    write_text_atomic(out / "classes.json", json.dumps(classes, indent=1))
    write_text_atomic(out / "dataset.json", json.dumps(
        {"mode": info.mode, "image_size": info.image_size, "rows": counts, "source": str(source.resolve()),
         "skipped": {split: len(b.skipped) for split, b in bad.items()}}, indent=1))
    return info


def _write_rows(path: Path, rows: list[tuple[str, bytes, int]]) -> None:
    ids, images, labels = zip(*rows)
    table = pa.table({"id": list(ids), "image": list(images), "label": list(labels)}, schema=DATASET_SCHEMA)
    write_table_atomic(table, path)


def ensure_dataset(data: DataConfig, seed: int) -> Path:
    """The Parquet dataset at ``data.root``, ingested from ``data.source`` first when it is
    missing or was ingested from elsewhere."""
    dataset = Path(data.root).resolve()
    if not ingested_from(dataset, data.source, data.image_size):
        ingest(data.source, dataset, data.test_fraction, seed, data.image_size, data.rows_per_file, data.on_bad_rows)
    return dataset
