"""The dataset contract and the importers that produce it.

A dataset is a folder::

    classes.json        label map: a JSON list, index = label
    dataset.json        image mode ("L" or "RGB"), image size, rows per split
    train/part-*.parquet, test/part-*.parquet
                        columns id (string), image (encoded PNG/JPEG bytes), label (int64)

Importers read the original idx ``.gz`` files of (Fashion-)MNIST or an ImageFolder tree (one
sub-folder per class). Images are decoded with PIL only; nothing is unpickled.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import random
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pipeline.data.bad_rows import BadRows, DataError, label_problem
from pipeline.atomic import write_table_atomic

log = logging.getLogger(__name__)

SPLITS = ("train", "test")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
MAX_DEFAULT_IMAGE_SIZE = 64
DATASET_SCHEMA = pa.schema([("id", pa.string()), ("image", pa.binary()), ("label", pa.int64())])


@dataclass(frozen=True)
class DatasetInfo:
    classes: list[str]
    mode: str  # PIL mode every image is decoded to: "L" or "RGB"
    image_size: int
    rows: dict[str, int]

    @property
    def channels(self) -> int:
        return 1 if self.mode == "L" else 3


def read_dataset_info(root: str | Path) -> DatasetInfo:
    root = Path(root)
    for name in ("classes.json", "dataset.json"):
        if not (root / name).is_file():
            raise DataError(f"{root}: not an ingested dataset ({name} is missing); run jobs.ingest first")
    classes = json.loads((root / "classes.json").read_text())
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise DataError(f"{root / 'classes.json'}: expected a JSON list of class names")
    meta = json.loads((root / "dataset.json").read_text())
    return DatasetInfo(classes=classes, mode=meta["mode"], image_size=meta["image_size"], rows=meta["rows"])


def ingested_from(root: str | Path, source: str | Path, image_size: int | None = None) -> bool:
    """Whether ``root`` already holds an ingest of ``source`` (at ``image_size``, when given)."""
    meta_path = Path(root) / "dataset.json"
    if not meta_path.is_file():
        return False
    meta = json.loads(meta_path.read_text())
    same_size = image_size is None or meta.get("image_size") == image_size
    return meta.get("source") == str(Path(source).resolve()) and same_size


def split_files(root: str | Path, split: str) -> list[str]:
    files = sorted(str(p) for p in (Path(root) / split).glob("*.parquet"))
    if not files:
        raise DataError(f"{Path(root) / split}: no Parquet files (empty split)")
    return files


# ---------------------------------------------------------------- importers


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
    """Class names and rows of an ImageFolder tree, split per class with a seeded shuffle.

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
        for path, label in sorted(assignment[split], key=lambda item: str(item[0])):
            yield str(path.relative_to(folder)), path.read_bytes(), label

    return classes, {split: rows(split) for split in SPLITS}


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
        (out / "bad_rows.json").write_text(json.dumps({s: b.summary() for s, b in bad.items()}, indent=1))
        if counts[split] == 0:
            detail = f" (all {skipped['skipped']} rows are bad: {skipped['by_problem']}, see {out / 'bad_rows.json'})"
            raise DataError(f"{source}: the {split} split is empty{detail if skipped['skipped'] else ''}")
        if skipped["skipped"]:
            log.warning("ingest: skipped %d bad %s rows %s (listed in %s)", skipped["skipped"], split,
                        skipped["by_problem"], out / "bad_rows.json")
        log.info("ingest: wrote %d %s rows to %s", counts[split], split, out / split)
    size = image_size or min(int(np.median(sizes)), MAX_DEFAULT_IMAGE_SIZE)
    info = DatasetInfo(classes=classes, mode="L" if modes == {"L"} else "RGB", image_size=size, rows=counts)
    (out / "classes.json").write_text(json.dumps(classes, indent=1))
    (out / "dataset.json").write_text(json.dumps(
        {"mode": info.mode, "image_size": info.image_size, "rows": counts, "source": str(source.resolve()),
         "skipped": {split: len(b.skipped) for split, b in bad.items()}}, indent=1))
    return info


def _write_rows(path: Path, rows: list[tuple[str, bytes, int]]) -> None:
    ids, images, labels = zip(*rows)
    table = pa.table({"id": list(ids), "image": list(images), "label": list(labels)}, schema=DATASET_SCHEMA)
    write_table_atomic(table, path)


# ---------------------------------------------------------------- reading


def decode_pixels(data: bytes | None, mode: str, size: int) -> np.ndarray:
    """One encoded image as uint8 [C, size, size]; ``DataError`` if it cannot be."""
    image = open_image(data).convert(mode)
    if image.size != (size, size):
        image = image.resize((size, size), Image.BILINEAR)
    pixels = np.asarray(image)
    return pixels[None] if mode == "L" else pixels.transpose(2, 0, 1)


def scale_pixels(pixels: np.ndarray) -> np.ndarray:
    """uint8 pixels as the models' float32 input, in [-1, 1]."""
    return pixels.astype(np.float32) / 127.5 - 1.0


def decode_image(data: bytes | None, mode: str, size: int) -> np.ndarray:
    """One encoded image as float32 [C, size, size] scaled to [-1, 1]; ``DataError`` if it cannot be."""
    return scale_pixels(decode_pixels(data, mode, size))


def decode_file(files: dict[str, np.ndarray], info: DatasetInfo,
                rows_per_batch: int) -> Iterator[dict[str, np.ndarray]]:
    """The rows of the dataset files that ``files["path"]`` names, images decoded to uint8 pixels
    (``scale_pixels`` makes them model input), in batches of at most ``rows_per_batch`` (which
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
            pixels = np.zeros((len(rows), info.channels, info.image_size, info.image_size), dtype=np.uint8)
            problems = []
            for row, (data, label) in enumerate(zip(images, labels)):
                problem = label_problem(label, len(info.classes))
                if problem is None:
                    try:
                        pixels[row] = decode_pixels(data, info.mode, info.image_size)
                    except DataError as error:
                        problem = str(error)
                problems.append(problem or "")
            yield {"id": np.array(rows.column("id").to_pylist(), dtype=object), "pixels": pixels,
                   "label": np.array([-1 if p else int(y) for y, p in zip(labels, problems)], dtype=np.int64),
                   "problem": np.array(problems, dtype=object), "path": np.array([path] * len(rows), dtype=object)}


def decode_images(images: list[bytes], mode: str, size: int, ids: list[str]) -> np.ndarray:
    """Encoded images as a float32 array [N, C, size, size]; a bad one stops, naming its id."""
    out = np.empty((len(images), 1 if mode == "L" else 3, size, size), dtype=np.float32)
    for index, data in enumerate(images):
        try:
            out[index] = decode_image(data, mode, size)
        except DataError as error:
            raise DataError(f"row {ids[index]!r}: {error}") from None
    return out


def class_indices(dataset_classes: list[str], wanted: str | list[str]) -> list[int]:
    """Dataset label indices of a model's classes: all, the first half (sorted order), or names."""
    if wanted == "all":
        return list(range(len(dataset_classes)))
    if wanted == "first_half":
        return list(range((len(dataset_classes) + 1) // 2))
    unknown = [name for name in wanted if name not in dataset_classes]
    if unknown:
        raise DataError(f"classes {unknown} are not in the dataset's classes.json {dataset_classes}")
    return sorted(dataset_classes.index(name) for name in wanted)


def in_fraction(row_id: str, fraction: float, seed: int) -> bool:
    """Whether a row belongs to a seeded ``fraction`` of the data, decided by its id alone so
    that every job (training, statistics) selects the same rows in any order."""
    if fraction >= 1.0:
        return True
    digest = hashlib.blake2b(f"{seed}:{row_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < fraction


def in_validation(row_id: str, fraction: float) -> bool:
    """Whether a training-split row is held out for validation (sweeps, model selection): a
    share ``fraction`` decided by the id alone, under no seed, so that the old model, every new
    model and their statistics leave out the same rows. The test split is never used for it."""
    return fraction > 0 and in_fraction(f"validation:{row_id}", fraction, seed=0)


def load_split(root: str | Path, split: str, labels: list[int] | None = None, fraction: float = 1.0,
               seed: int = 0, shard: tuple[int, int] = (0, 1), validation_fraction: float = 0.0,
               validation: bool = False) -> tuple[list[str], np.ndarray, np.ndarray]:
    """ids, decoded images and dataset labels of one split, filtered and sharded.

    ``labels`` keeps only those dataset labels; ``fraction`` keeps a seeded share of the rows
    (``in_fraction``); ``validation_fraction`` leaves out the validation rows
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
    if fraction < 1.0:
        keep &= np.array([in_fraction(row_id, fraction, seed) for row_id in ids])
    if validation_fraction > 0 or validation:
        keep &= np.array([in_validation(row_id, validation_fraction) == validation for row_id in ids], dtype=bool)
    selected = np.flatnonzero(keep)
    rank, world = shard
    rows = selected[: len(selected) // world * world][rank::world]
    images = table.column("image").take(pa.array(rows)).to_pylist()
    pixels = decode_images(images, info.mode, info.image_size, ids[rows].tolist())
    return ids[rows].tolist(), pixels, targets[rows].astype(np.int64)
