"""The dataset contract: what an ingested dataset folder holds, and which rows a model reads.

A dataset is a folder::

    classes.json        label map: a JSON list, index = label
    dataset.json        image mode ("L" or "RGB"), image size, rows per split
    train/part-*.parquet, test/part-*.parquet
                        columns id (string), image (encoded PNG/JPEG bytes), label (int64)

``pipeline.data.importers`` writes it, ``pipeline.data.decode`` turns its images into model input.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from pipeline.data.bad_rows import DataError

SPLITS = ("train", "test")
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


def class_names(dataset_classes: list[str], wanted: str | list[str]) -> list[str]:
    """A model's classes by name, in the dataset's label order (``class_indices``)."""
    return [dataset_classes[index] for index in class_indices(dataset_classes, wanted)]


def in_fraction(row_id: str, fraction: float, seed: int) -> bool:
    """Whether a row belongs to a seeded ``fraction`` of the data, decided by its id alone so
    that every job (training, statistics) selects the same rows in any order."""
    if fraction >= 1.0:
        return True
    digest = hashlib.blake2b(f"{seed}:{row_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < fraction


def share_with_rows(fraction: float, min_rows: int, available: int) -> float:
    """``fraction`` of ``available`` rows, raised (at most to all of them) so that it keeps about
    ``min_rows``: a share sized for a large dataset still holds enough rows of a small one."""
    if min_rows <= 0 or available <= 0:
        return fraction
    return min(1.0, max(fraction, min_rows / available))


def class_rows(root: str | Path, split: str, labels: list[int]) -> int:
    """How many rows of ``split`` have one of the dataset ``labels`` (its label column alone is read)."""
    import pyarrow.parquet as pq

    wanted = set(labels)
    return sum(label in wanted for label in pq.read_table(split_files(root, split), columns=["label"])
               .column("label").to_pylist())


def in_validation(row_id: str, fraction: float) -> bool:
    """Whether a training-split row is held out for validation (sweeps, model selection): a
    share ``fraction`` decided by the id alone, under no seed, so that the old model, every new
    model and their statistics leave out the same rows. The test split is never used for it."""
    return fraction > 0 and in_fraction(f"validation:{row_id}", fraction, seed=0)


