"""Decoding a dataset's encoded images into a model's input: PIL decodes (nothing is unpickled),
``pipeline.data.preprocess`` resizes and crops to the model's declared input. The encoding's
decoding tasks import this module alone: it needs no torch until pixels become float input."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pipeline.config import Preprocessing
from pipeline.data.bad_rows import DataError, label_problem
from pipeline.data.dataset import (
    DatasetInfo,
    in_fraction,
    in_validation,
    read_dataset_info,
    share_with_rows,
    split_files,
)
from pipeline.data.preprocess import eval_pixels, model_input


def open_image(data: bytes | None) -> Image.Image:
    """The decoded image of encoded ``data``; ``DataError`` saying why it cannot be."""
    if not data:
        raise DataError("no image bytes")
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
        return image
    except Exception as error:  # PIL raises many types for bad bytes
        raise DataError(f"image bytes cannot be decoded ({error})") from None


def decode_pixels(data: bytes | None, preprocessing: Preprocessing) -> np.ndarray:
    """One encoded image as a model's uint8 pixels [C, S, S] (``eval_pixels``); ``DataError`` if it cannot be."""
    return eval_pixels(open_image(data), preprocessing)


def decode_file(files: dict[str, np.ndarray], info: DatasetInfo, preprocessing: Preprocessing,
                rows_per_batch: int) -> Iterator[dict[str, np.ndarray]]:
    """The rows of the dataset files that ``files["path"]`` names, images decoded to a model's
    uint8 pixels (``pipeline.data.preprocess``), in batches of at most ``rows_per_batch`` (which
    bounds memory at any image size); a Ray Data task.

    A bad row (image that does not decode, missing label, label outside the label map) comes
    out with zero pixels, label -1 and its ``problem`` (else ""), so that the consumer applies
    the bad-row policy and names the row and its file.
    """
    for path in files["path"]:
        table = pq.read_table(path, columns=["id", "image", "label"])
        for start in range(0, len(table), rows_per_batch):
            rows = table.slice(start, rows_per_batch)
            images, labels = rows.column("image").to_pylist(), rows.column("label").to_pylist()
            pixels = np.zeros((len(rows), *preprocessing.shape), dtype=np.uint8)
            problems = []
            for row, (data, label) in enumerate(zip(images, labels)):
                problem = label_problem(label, len(info.classes))
                if problem is None:
                    try:
                        pixels[row] = decode_pixels(data, preprocessing)
                    except DataError as error:
                        problem = str(error)
                problems.append(problem or "")
            yield {"id": np.array(rows.column("id").to_pylist(), dtype=object), "pixels": pixels,
                   "label": np.array([-1 if p else int(y) for y, p in zip(labels, problems)], dtype=np.int64),
                   "problem": np.array(problems, dtype=object), "path": np.array([path] * len(rows), dtype=object)}


def decode_images(images: list[bytes], preprocessing: Preprocessing, ids: list[str]) -> np.ndarray:
    """Encoded images as a model's float32 input [N, C, S, S]; a bad one stops, naming its id."""
    pixels = np.empty((len(images), *preprocessing.shape), dtype=np.uint8)
    for index, data in enumerate(images):
        try:
            pixels[index] = decode_pixels(data, preprocessing)
        except DataError as error:
            raise DataError(f"row {ids[index]!r}: {error}") from None
    return model_input(pixels, preprocessing).numpy()


def equal_share(rows: int, rank: int, world: int) -> slice:
    """Worker ``rank`` of ``world``'s equal, disjoint share of ``rows`` rows; the last
    ``rows % world`` rows go to no one, so that every worker runs as many steps."""
    return slice(rank, rows // world * world, world)


def load_split(root: str | Path, split: str, labels: list[int] | None = None, fraction: float = 1.0,
               seed: int = 0, shard: tuple[int, int] = (0, 1), validation_fraction: float = 0.0,
               validation: bool = False, preprocessing: Preprocessing | None = None,
               min_rows: int = 0) -> tuple[list[str], np.ndarray, np.ndarray]:
    """ids, decoded images (a model's input: ``preprocessing``, by default the dataset's mode and
    size in [-1, 1]) and dataset labels of one split, filtered and sharded.

    ``labels`` keeps only those dataset labels; ``fraction`` keeps a seeded share of the rows
    (``in_fraction``), at least about ``min_rows`` of them (``share_with_rows``); ``validation_fraction`` leaves out the validation rows
    (``in_validation``), or keeps only them when ``validation``; ``shard=(rank, world)`` gives
    each worker an equal, disjoint share so that all workers run the same number of steps.
    """
    info = read_dataset_info(root)
    table = pq.read_table(split_files(root, split), columns=["id", "image", "label"])
    ids = np.asarray(table.column("id").to_pylist(), dtype=object)
    targets = table.column("label").to_numpy(zero_copy_only=False)
    bad = np.flatnonzero(~np.isfinite(targets) | (targets < 0) | (targets >= len(info.classes)))
    if len(bad):
        raise DataError(f"{Path(root) / split}: row {ids[bad[0]]!r}: {label_problem(targets[bad[0]], len(info.classes))} "
                        f"({len(bad)} such rows; ingest or encode with on_bad_rows: skip to list them)")
    keep = np.ones(len(ids), dtype=bool) if labels is None else np.isin(targets, labels)
    fraction = share_with_rows(fraction, min_rows, int(keep.sum()))
    if fraction < 1.0:
        keep &= np.array([in_fraction(row_id, fraction, seed) for row_id in ids])
    if validation_fraction > 0 or validation:
        keep &= np.array([in_validation(row_id, validation_fraction) == validation for row_id in ids], dtype=bool)
    selected = np.flatnonzero(keep)
    rank, world = shard
    rows = selected[equal_share(len(selected), rank, world)]
    images = table.column("image").take(pa.array(rows)).to_pylist()
    pixels = decode_images(images, preprocessing or Preprocessing.project(info.mode, info.image_size),
                           ids[rows].tolist())
    return ids[rows].tolist(), pixels, targets[rows].astype(np.int64)
