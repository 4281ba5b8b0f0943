"""The embeddings contract: Parquet with ``id``, ``label``, ``model``, ``embedding``.

``embedding`` is a fixed-size list of float32; each file's metadata carries the model card's
id, name and dimension and the dataset's label map, so a set can be checked without its model.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.parquet import write_table_atomic

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


def embeddings_table(ids: list[str], labels: np.ndarray, vectors: np.ndarray, model_id: str, model_name: str,
                     classes: list[str]) -> pa.Table:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    dim = vectors.shape[1]
    embedding = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim)
    meta = {"model_id": model_id, "model_name": model_name, "dim": dim, "classes": classes}
    schema = pa.schema([("id", pa.string()), ("label", pa.int64()), ("model", pa.string()),
                        ("embedding", pa.list_(pa.float32(), dim))], metadata={META_KEY: json.dumps(meta)})
    return pa.table([pa.array(ids, pa.string()), pa.array(labels, pa.int64()),
                     pa.array([model_name] * len(ids), pa.string()), embedding], schema=schema)


def write_embeddings(path: str | Path, table: pa.Table) -> None:
    write_table_atomic(table, path)


def read_embeddings(folder: str | Path) -> EmbeddingSet:
    """All part files of one embeddings set, checked to come from one model."""
    folder = Path(folder)
    files = sorted(folder.glob("*.parquet")) if folder.is_dir() else [folder]
    if not files or not files[0].exists():
        raise FileNotFoundError(f"{folder}: no embeddings Parquet files")
    metas = []
    for file in files:
        raw = pq.read_schema(file).metadata or {}
        if META_KEY not in raw:
            raise ValueError(f"{file}: not an embeddings file (no {META_KEY.decode()} metadata)")
        metas.append(json.loads(raw[META_KEY]))
    if len({m["model_id"] for m in metas}) != 1:
        raise ValueError(f"{folder}: files from several models {sorted({m['model_id'] for m in metas})}")
    table = pq.read_table(files, columns=["id", "label", "embedding"])
    ids = np.asarray(table.column("id").to_pylist(), dtype=object)
    if len(set(ids)) != len(ids):
        repeated = sorted(i for i, count in Counter(ids.tolist()).items() if count > 1)[:5]
        raise ValueError(f"{folder}: repeated ids {repeated} (an id must name one image)")
    dim = metas[0]["dim"]
    flat = table.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return EmbeddingSet(path=str(folder), model_id=metas[0]["model_id"], model_name=metas[0]["model_name"],
                        ids=ids,
                        labels=table.column("label").to_numpy().astype(np.int64),
                        vectors=flat.reshape(-1, dim).astype(np.float32, copy=False), classes=metas[0]["classes"])
