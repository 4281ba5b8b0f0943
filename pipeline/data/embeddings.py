"""The embeddings contract: Parquet with ``id``, ``label``, ``model``, ``embedding``.

``embedding`` is a fixed-size list of float32; each file's metadata carries the model card's
id, name and dimension and the dataset's label map, so a set can be checked without its model.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.atomic import write_table_atomic
from pipeline.names import check_name

META_KEY = b"compat_embed"


@dataclass(frozen=True)
class EmbeddingSet:
    path: str
    model_id: str
    model_name: str
    ids: np.ndarray        # [N] object (str)
    labels: np.ndarray     # [N] int64, dataset labels
    vectors: np.ndarray    # [N, d] float32
    classes: list[str]     # the dataset's label map

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return len(self.ids)

    def load(self) -> "EmbeddingSet":
        """Itself: a set in memory and ``EmbeddingFiles`` both load into one."""
        return self

    def vectors_of(self, ids: list[str] | np.ndarray) -> np.ndarray:
        """The vectors of ``ids``, in their order (an id the set lacks is an error naming it)."""
        return self.vectors[positions(self.ids, ids, self.path)]

    def shards(self, rows: int = 100_000) -> Iterator[Shard]:
        for start in range(0, len(self.ids), rows):
            yield Shard(start, self.ids[start : start + rows], self.labels[start : start + rows],
                        self.vectors[start : start + rows])


def positions(available: np.ndarray | list[str], wanted: np.ndarray | list[str], source: str) -> np.ndarray:
    """Where each of the ``wanted`` ids is among the ``available`` ones; ids missing from
    ``source`` are an error that names the first of them and how many there are."""
    position = {row_id: i for i, row_id in enumerate(np.asarray(available).tolist())}
    missing = [row_id for row_id in np.asarray(wanted).tolist() if row_id not in position]
    if missing:
        raise ValueError(f"{source}: no vectors for {len(missing)} of the {len(wanted)} ids wanted, "
                         f"first {missing[:5]} (encoded from another dataset or split?)")
    return np.array([position[row_id] for row_id in np.asarray(wanted).tolist()], dtype=np.int64)


def embeddings_table(ids: list[str], labels: np.ndarray, vectors: np.ndarray, model_id: str, model_name: str,
                     classes: list[str], source: dict | None = None) -> pa.Table:
    """The embeddings of ``ids``; ``source`` (which input file, which rows were skipped) joins the
    metadata, so that a rerun knows what a part holds."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    dim = vectors.shape[1]
    embedding = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim)
    meta = {"model_id": model_id, "model_name": model_name, "dim": dim, "classes": classes, **(source or {})}
    schema = pa.schema([("id", pa.string()), ("label", pa.int64()), ("model", pa.string()),
                        ("embedding", pa.list_(pa.float32(), dim))], metadata={META_KEY: json.dumps(meta)})
    return pa.table([pa.array(ids, pa.string()), pa.array(labels, pa.int64()),
                     pa.array([model_name] * len(ids), pa.string()), embedding], schema=schema)


def write_embeddings(path: str | Path, table: pa.Table) -> None:
    write_table_atomic(table, path)


@dataclass(frozen=True)
class EmbeddingFiles:
    """An embeddings set on disk, read shard by shard (a gallery larger than memory) or whole."""

    path: str
    model_id: str
    model_name: str
    dim: int
    classes: list[str]
    files: list[Path]
    num_rows: int

    def __len__(self) -> int:
        return self.num_rows

    def shards(self, rows: int = 100_000) -> Iterator[Shard]:
        """Consecutive shards of at most ``rows`` rows, in file order."""
        offset = 0
        for file in self.files:
            for batch in pq.ParquetFile(file).iter_batches(batch_size=rows, columns=["id", "label", "embedding"]):
                flat = batch.column("embedding").flatten().to_numpy(zero_copy_only=False)
                yield Shard(offset, np.asarray(batch.column("id").to_pylist(), dtype=object),
                            batch.column("label").to_numpy().astype(np.int64),
                            flat.reshape(-1, self.dim).astype(np.float32, copy=False))
                offset += batch.num_rows

    def load(self) -> EmbeddingSet:
        """The whole set in memory, its ids checked to be unique."""
        table = pq.read_table(self.files, columns=["id", "label", "embedding"])
        ids = np.asarray(table.column("id").to_pylist(), dtype=object)
        if len(set(ids)) != len(ids):
            repeated = sorted(i for i, count in Counter(ids.tolist()).items() if count > 1)[:5]
            raise ValueError(f"{self.path}: repeated ids {repeated} (an id must name one image)")
        flat = table.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        return EmbeddingSet(path=self.path, model_id=self.model_id, model_name=self.model_name, ids=ids,
                            labels=table.column("label").to_numpy().astype(np.int64),
                            vectors=flat.reshape(-1, self.dim).astype(np.float32, copy=False), classes=self.classes)


def open_embeddings(folder: str | Path) -> EmbeddingFiles:
    """The part files of one embeddings set, their metadata checked to come from one model;
    no vector is read."""
    folder = Path(folder)
    files = sorted(folder.glob("*.parquet")) if folder.is_dir() else [folder]
    if not files or not files[0].exists():
        raise FileNotFoundError(f"{folder}: no embeddings Parquet files")
    metas, rows = [], 0
    for file in files:
        parquet = pq.ParquetFile(file)
        raw = parquet.schema_arrow.metadata or {}
        if META_KEY not in raw:
            raise ValueError(f"{file}: not an embeddings file (no {META_KEY.decode()} metadata)")
        metas.append(json.loads(raw[META_KEY]))
        rows += parquet.metadata.num_rows
    if len({m["model_id"] for m in metas}) != 1:
        raise ValueError(f"{folder}: files from several models {sorted({m['model_id'] for m in metas})}")
    check_name(metas[0]["model_name"], f"{files[0]}: model name")  # it names report files and MLflow keys
    return EmbeddingFiles(path=str(folder), model_id=metas[0]["model_id"], model_name=metas[0]["model_name"],
                          dim=int(metas[0]["dim"]), classes=metas[0]["classes"], files=files, num_rows=rows)


def read_embeddings(folder: str | Path) -> EmbeddingSet:
    """All part files of one embeddings set in memory, checked to come from one model."""
    return open_embeddings(folder).load()


@dataclass(frozen=True)
class Shard:
    """Consecutive gallery rows starting at position ``offset`` of the whole gallery."""

    offset: int
    ids: np.ndarray | None  # [n] str, or None when the gallery has no ids to exclude
    labels: np.ndarray      # [n] int
    vectors: np.ndarray     # [n, d]
