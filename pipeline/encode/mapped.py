"""Transformed models as matrix entries: embedding sets mapped through a learned transformation.

A model trained with a backward transformation (T21) adds the entry ``<model>.t21``: its own
embeddings mapped into the old space, to be searched against the old gallery. A model trained
with a forward transformation (T12) adds ``<old>.t12.<model>``: the old gallery mapped into the
new space, searched by the new model's queries; its criterion reference is the old model (the
names are ``pipeline.compat.methods``'s). Each entry is written as an ordinary embeddings set, so
the report names the files it scored.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.compat.methods import t12_entry, t21_entry
from pipeline.data.embeddings import EmbeddingFiles, EmbeddingSet, embeddings_table, open_embeddings, write_embeddings
from pipeline.model.artifacts import load_cmc, load_model
from pipeline.model.card import CmcCard, ModelCard, read_card, read_encoder_card
from pipeline.model.transformations import BACKWARD, FORWARD
from pipeline.score import MatrixEntry

ROWS_PER_FILE = 10_000


def map_embeddings(source: EmbeddingSet | EmbeddingFiles, transform: nn.Module, name: str, model_id: str,
                   out_dir: str | Path) -> EmbeddingFiles:
    """``transform`` (eval mode) applied to every unit-normalised vector of ``source``, shard by
    shard, written to ``out_dir`` (transformations are trained on unit vectors:
    ``pipeline.compat.losses.map_rows``)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob("*.parquet"):
        stale.unlink()
    transform = transform.eval()
    for part, shard in enumerate(source.shards(ROWS_PER_FILE)):
        with torch.inference_mode():
            unit = F.normalize(torch.from_numpy(np.array(shard.vectors, dtype=np.float32)), dim=1)
            vectors = transform(unit).numpy()
        write_embeddings(out_dir / f"part-{part:05d}.parquet", embeddings_table(
            shard.ids.tolist(), shard.labels, vectors, model_id, name, source.classes))
    return open_embeddings(out_dir)


def matrix_entries(models: dict[str, Path], sets: dict[str, EmbeddingSet | EmbeddingFiles], old: str,
                   out_root: str | Path, split: str, cmc: dict[str, Path] | None = None) -> dict[str, MatrixEntry]:
    """Every model's own entry plus one entry per transformation it (or a CMC artifact) trained,
    the mapped sets written to ``out_root/<entry>/<split>``."""
    entries = {name: MatrixEntry.plain(name, sets[name], old) for name in sets}
    carriers = []  # (name, transforms, id, whose embeddings T21 maps, what it is)
    for name, folder in models.items():
        card = read_encoder_card(folder)
        if isinstance(card, ModelCard) and card.transforms:  # an imported model trained no transformation
            carriers.append((name, load_model(folder)[0].transforms, card.id, name, name))
    for name, folder in (cmc or {}).items():
        transforms, card = load_cmc(folder)
        new_model = card.new_model.name
        carriers.append((name, transforms, card.id, new_model, f"{card.method} {name} of {new_model}"))
    for name, transforms, model_id, source, what in carriers:
        missing = [model for model in (source, old) if model not in sets]
        if missing and len(transforms):
            raise ValueError(f"the transformations of {name} need the embeddings of {missing} (have {sorted(sets)})")
        if BACKWARD in transforms:
            entry = t21_entry(name)
            mapped = map_embeddings(sets[source], transforms[BACKWARD], entry, f"{model_id}.t21",
                                    Path(out_root) / entry / split)
            entries[entry] = MatrixEntry(mapped, entry, f"T21 of {what} (new -> old)", old, source)
        if FORWARD in transforms:
            entry = t12_entry(old, name)
            mapped = map_embeddings(sets[old], transforms[FORWARD], entry, f"{model_id}.t12",
                                    Path(out_root) / entry / split)
            entries[entry] = MatrixEntry(mapped, old, f"T12 of {what} (old -> new)", source, source)
    return entries


def entries_from_files(embeddings: list[str | Path], artifacts: list[str | Path], old: str, out_root: str | Path,
                       split: str, external: list[EmbeddingSet] = ()) -> dict[str, MatrixEntry]:
    """The entries of embeddings folders (one per model, named by their metadata), of sets read
    already (``external``: a team's own, ``pipeline.data.external.external_set``) and of the
    model and CMC artifacts whose transformations add entries (``matrix_entries``)."""
    sets: dict[str, EmbeddingFiles | EmbeddingSet] = {}
    for found in [open_embeddings(folder) for folder in embeddings] + list(external):
        if found.model_name in sets:
            raise ValueError(f"{found.path}: a second embeddings set of model {found.model_name!r}")
        sets[found.model_name] = found
    models, cmc = {}, {}
    for folder in artifacts:
        card = read_card(folder)
        (cmc if isinstance(card, CmcCard) else models)[card.name] = Path(folder)
    return matrix_entries(models, sets, old, out_root, split, cmc)
