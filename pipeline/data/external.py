"""Embeddings a team's own encoder wrote, read into this project's embeddings contract.

A model known only by its embeddings (``EmbeddingsSource``) comes as Parquet files with an ``id``
column (the dataset's image ids), an ``embedding`` column (a list of floats, one length) and
optionally a ``label`` column (the dataset's label index or class name, checked when given).
``external_split`` keeps the rows of one dataset split, in the split's order, and writes them as
an embeddings set of the imported model (``pipeline.data.embeddings``), refusing a split id that
has no embedding (how many, the first few), a repeated id, a vector of another length or one that
is not finite, each error naming the file.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.data.bad_rows import DataError
from pipeline.data.dataset import read_dataset_info, split_files
from pipeline.data.embeddings import EmbeddingSet, embeddings_table, write_embeddings

log = logging.getLogger(__name__)
ROWS_PER_PART = 100_000


def embeddings_files(path: str | Path) -> list[Path]:
    """The Parquet files of a team's embeddings set: one file, or a folder's ``*.parquet``."""
    path = Path(path)
    files = sorted(path.glob("*.parquet")) if path.is_dir() else [path] if path.is_file() else []
    if not files:
        raise DataError(f"{path}: no embeddings Parquet files (old.source)")
    return files


def _checked_schema(file: Path) -> pa.Schema:
    schema = pq.read_schema(file)
    for column in ("id", "embedding"):
        if column not in schema.names:
            raise DataError(f"{file}: no '{column}' column (an embeddings file has id, embedding and optionally label; "
                            f"it has {schema.names})")
    kind = schema.field("embedding").type
    if not (pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)) \
            or not pa.types.is_floating(kind.value_type):
        raise DataError(f"{file}: column 'embedding' is {kind}, not a list of floats")
    return schema


def external_dim(path: str | Path) -> int:
    """The embedding length of a team's set (its first non-null embedding), its files' schemas checked."""
    files = embeddings_files(path)
    kinds = [_checked_schema(file).field("embedding").type for file in files]
    fixed = next((kind for kind in kinds if pa.types.is_fixed_size_list(kind)), None)
    if fixed is not None:
        return fixed.list_size
    for file in files:
        for batch in pq.ParquetFile(file).iter_batches(batch_size=1024, columns=["embedding"]):
            embedding = batch.column("embedding").drop_null()
            if len(embedding):
                return len(embedding[0].as_py())
    raise DataError(f"{path}: no embeddings in {[str(file) for file in files]} (no rows, or every row null)")


def _read(path: str | Path, dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """ids, vectors [N, dim] float32 and the labels column (None without one) of a team's set."""
    ids, vectors, labels = [], [], []
    files = embeddings_files(path)
    for file in files:
        schema = _checked_schema(file)
        columns = ["id", "embedding"] + (["label"] if "label" in schema.names else [])
        table = pq.read_table(file, columns=columns)
        embedding = table.column("embedding").combine_chunks()
        empty = np.flatnonzero(embedding.is_null().to_numpy(zero_copy_only=False))
        if len(empty):
            raise DataError(f"{file}: row {table.column('id')[int(empty[0])].as_py()!r}: no embedding ({len(empty)} "
                            "such rows)")
        lengths = embedding.value_lengths().to_numpy(zero_copy_only=False) if not pa.types.is_fixed_size_list(
            embedding.type) else np.full(len(embedding), embedding.type.list_size)
        wrong = np.flatnonzero(lengths != dim)
        if len(wrong):
            raise DataError(f"{file}: row {table.column('id')[int(wrong[0])].as_py()!r}: an embedding of "
                            f"{int(lengths[wrong[0]])} values, expected {dim} ({len(wrong)} such rows)")
        flat = embedding.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
        block = flat.reshape(-1, dim)
        bad = np.flatnonzero(~np.isfinite(block).all(axis=1))
        if len(bad):
            raise DataError(f"{file}: row {table.column('id')[int(bad[0])].as_py()!r}: an embedding that is not finite "
                            f"({len(bad)} such rows)")
        ids.append(np.asarray(table.column("id").to_pylist(), dtype=object))
        vectors.append(block)
        labels.append(table.column("label").to_pylist() if "label" in columns else None)
    unlabelled = [str(file) for file, part in zip(files, labels) if part is None]
    if unlabelled and len(unlabelled) < len(files):
        raise DataError(f"{path}: files {unlabelled} have no 'label' column and the others have one: label every "
                        f"file or none")
    given = None if unlabelled else np.array(sum(labels, []), dtype=object)
    return np.concatenate(ids), np.concatenate(vectors), given


def external_set(path: str | Path, name: str, classes: list[str]) -> EmbeddingSet:
    """A team's embeddings set scored as it is (``jobs.score --external``): its ``label`` column
    (index or class name of ``classes``) required, no dataset behind it; its model id a hash of
    the files' stamps, so that a scored pair is reused until the files change."""
    files = embeddings_files(path)
    ids, vectors, given = _read(path, external_dim(path))
    if given is None:
        raise DataError(f"{path}: no 'label' column: a set scored without its dataset needs each row's label")
    labels = []
    for row_id, label in zip(ids, given):
        if isinstance(label, str) and label in classes:
            labels.append(classes.index(label))
        elif isinstance(label, int) and 0 <= label < len(classes):
            labels.append(label)
        else:
            raise DataError(f"{path}: row {row_id!r}: label {label!r} is neither a class of the label map nor an index "
                            f"into its {len(classes)} classes")
    if len(set(ids.tolist())) != len(ids):
        raise DataError(f"{path}: repeated ids (an id must name one image)")
    stamps = "|".join(f"{file.resolve()}:{file.stat().st_size}:{file.stat().st_mtime_ns}" for file in files)
    model_id = f"{name}-{hashlib.blake2b(stamps.encode(), digest_size=4).hexdigest()}"
    return EmbeddingSet(path=str(path), model_id=model_id, model_name=name, ids=ids,
                        labels=np.array(labels, dtype=np.int64), vectors=vectors, classes=list(classes))


def _split_rows(dataset_root: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """ids and labels of a dataset split, in its files' order (no image is read)."""
    table = pa.concat_tables(pq.read_table(file, columns=["id", "label"]) for file in split_files(dataset_root, split))
    return np.asarray(table.column("id").to_pylist(), dtype=object), table.column("label").to_numpy().astype(np.int64)


def _check_labels(given: np.ndarray, expected: np.ndarray, ids: np.ndarray, classes: list[str], source: str) -> None:
    """A team's label column (index or class name) against the dataset's labels of the same ids."""
    names = np.array([classes[label] for label in expected], dtype=object)
    wrong = [row for row, label in enumerate(given) if label != expected[row] and label != names[row]]
    if wrong:
        row = wrong[0]
        raise DataError(f"{source}: row {ids[row]!r}: label {given[row]!r}, the dataset says {int(expected[row])} "
                        f"({names[row]}) ({len(wrong)} such rows; labels must be the dataset's index or class name)")


def external_split(path: str | Path, dim: int, dataset_root: str | Path, split: str, model_id: str, model_name: str,
                   out_dir: str | Path) -> list[Path]:
    """The team's embeddings of every ``split`` image, in the split's order, written to
    ``out_dir`` as parts of at most ``ROWS_PER_PART`` rows; returns the parts."""
    info = read_dataset_info(dataset_root)
    split_ids, split_labels = _split_rows(dataset_root, split)
    ids, vectors, given = _read(path, dim)
    unique, counts = np.unique(ids.astype(str), return_counts=True)
    if (counts > 1).any():
        raise DataError(f"{path}: repeated ids {unique[counts > 1][:5].tolist()} ({int((counts > 1).sum())} ids "
                        "repeated; an id must name one image)")
    position = {row_id: row for row, row_id in enumerate(ids.tolist())}
    missing = [row_id for row_id in split_ids.tolist() if row_id not in position]
    if missing:
        raise DataError(f"{path}: no embedding for {len(missing)} of the {len(split_ids)} images of the dataset's "
                        f"{split} split ({Path(dataset_root) / split}), first {missing[:5]}")
    rows = np.array([position[row_id] for row_id in split_ids.tolist()], dtype=np.int64)
    if given is not None:
        _check_labels(given[rows], split_labels, split_ids, info.classes, str(path))
    if len(ids) > len(rows):
        log.info("%s: %d embeddings of images outside the dataset's %s split left out", path, len(ids) - len(rows),
                 split)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = []
    for index, start in enumerate(range(0, len(rows), ROWS_PER_PART)):
        chosen = rows[start : start + ROWS_PER_PART]
        parts.append(out_dir / f"part-{index:05d}.parquet")
        write_embeddings(parts[-1], embeddings_table(split_ids[start : start + ROWS_PER_PART].tolist(),
                                                     split_labels[start : start + ROWS_PER_PART], vectors[chosen],
                                                     model_id, model_name, info.classes,
                                                     {"source": str(path), "skipped": []}))
    return parts
