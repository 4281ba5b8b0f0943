"""Transformed models as matrix entries: embedding sets mapped through a learned transformation.

A model trained with ``backward_transform`` (T21) adds the entry ``<model>.t21``: its own
embeddings mapped into the old space, to be searched against the old gallery. A model trained
with ``forward_transform`` (T12) adds ``<old>.t12.<model>``: the old gallery mapped into the new
space, searched by the new model's queries; its criterion reference is the old model. Each
entry is written as an ordinary embeddings set, so the report names the files it scored.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.artifacts import load_model
from pipeline.embeddings import EmbeddingSet, embeddings_table, read_embeddings, write_embeddings

ROWS_PER_FILE = 10_000


@dataclass(frozen=True)
class MatrixEntry:
    embeddings: EmbeddingSet
    reference: str   # whose M(g, g) a gallery of this entry is compared with
    transform: str   # "none", or which transformation of which model made it


def map_embeddings(source: EmbeddingSet, transform: nn.Module, name: str, model_id: str, out_dir: str | Path) -> EmbeddingSet:
    """``transform`` (eval mode) applied to every unit-normalised vector of ``source``, written to
    ``out_dir`` (transformations are trained on unit vectors: ``pipeline.losses.map_rows``)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob("*.parquet"):
        stale.unlink()
    transform = transform.eval()
    for part, start in enumerate(range(0, len(source.ids), ROWS_PER_FILE)):
        rows = slice(start, start + ROWS_PER_FILE)
        with torch.inference_mode():
            unit = F.normalize(torch.from_numpy(np.ascontiguousarray(source.vectors[rows])), dim=1)
            vectors = transform(unit).numpy()
        write_embeddings(out_dir / f"part-{part:05d}.parquet", embeddings_table(
            source.ids[rows].tolist(), source.labels[rows], vectors, model_id, name, source.classes))
    return read_embeddings(out_dir)


def matrix_entries(models: dict[str, Path], sets: dict[str, EmbeddingSet], old: str, out_root: str | Path,
                   split: str) -> dict[str, MatrixEntry]:
    """Every model's own entry plus one entry per transformation it trained, the mapped sets
    written to ``out_root/<entry>/<split>``."""
    entries = {name: MatrixEntry(sets[name], name, "none") for name in sets}
    for name, folder in models.items():
        model, card = load_model(folder)
        if "backward_transform" in model.transforms:
            entry = f"{name}.t21"
            mapped = map_embeddings(sets[name], model.transforms["backward_transform"], entry, f"{card['id']}.t21",
                                    Path(out_root) / entry / split)
            entries[entry] = MatrixEntry(mapped, entry, f"T21 of {name} (new -> old)")
        if "forward_transform" in model.transforms:
            entry = f"{old}.t12.{name}"
            mapped = map_embeddings(sets[old], model.transforms["forward_transform"], entry, f"{card['id']}.t12",
                                    Path(out_root) / entry / split)
            entries[entry] = MatrixEntry(mapped, old, f"T12 of {name} (old -> new)")
    return entries
