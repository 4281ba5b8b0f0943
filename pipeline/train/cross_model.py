"""Cross-model compatibility (CMC): ``T12`` and ``T21`` fit between two trained, frozen models.

Neither model changes: both encode model 2's training images once (Ray Data, the same encoder
as the gallery), and Ray Train workers fit only the two transformations on those features, with
the objective of the CMC method (``pipeline.compat.methods``: LCE's alignment and boundary in
each target space, or the RBT-style point-wise regression), through the same driver and epoch
loop as compatible training (``pipeline.train.driver``, ``pipeline.train.loop``).

The artifact is a folder with ``transforms.pt`` (state dict of the two transformations, loaded
with ``weights_only=True``) and ``card.json`` (``pipeline.model.card.CmcCard``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray.train.torch
import torch
from torch import nn

from pipeline.atomic import write_npz_atomic
from pipeline.compat.losses import RetrievalMemory, memory_rows, warn_margin
from pipeline.compat.methods import Method, method_of
from pipeline.compat.objectives import cmc_terms
from pipeline.compat.statistics import OldSpaceStats, compute_old_space_stats
from pipeline.compat.steps import Autocast
from pipeline.config import CmcConfig, RunContext, TrainConfig
from pipeline.data.decode import equal_share
from pipeline.data.embeddings import EmbeddingSet
from pipeline.model.artifacts import build_cmc_transforms, new_model_id, write_artifact
from pipeline.model.card import CmcCard, EncoderCard, ModelCard, ModelRef, read_encoder_card
from pipeline.names import check_name
from pipeline.tracking import DESCRIPTION_TAG
from pipeline.train.checkpoints import final_weights
from pipeline.train.driver import FitJob, config_hash, run_fit
from pipeline.train.inputs import training_rows
from pipeline.train.loop import RunRecord, Worker, WorkerFit, run_epochs, start_worker

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CmcInputs:
    """What every worker of one CMC fit reads: the files ``write_inputs`` wrote."""

    config: CmcConfig
    method: Method
    features: str    # both models' features of model 2's training rows (``.features.npz``)
    old_space: str   # each space's statistics over them
    new_space: str
    record: RunRecord


def cmc_worker(inputs: CmcInputs) -> None:
    """One Ray Train worker: fit T12 and T21 on its shard of the two models' paired features."""
    worker = start_worker(inputs.config)
    torch.manual_seed(inputs.config.seed)
    run_epochs(_worker_fit(inputs, worker), inputs.config, worker, inputs.record)


def _worker_fit(inputs: CmcInputs, worker: Worker) -> WorkerFit:
    cfg, method, device = inputs.config, inputs.method, worker.device
    with np.load(inputs.features, allow_pickle=False) as data:
        rows = equal_share(len(data["labels"]), worker.rank, worker.world)
        ids = data["ids"][rows]
        old_features, new_features, labels = (torch.from_numpy(data[key][rows]) for key in ("old", "new", "labels"))
    old_space, new_space = OldSpaceStats.load(inputs.old_space), OldSpaceStats.load(inputs.new_space)
    transforms = build_cmc_transforms(old_features.shape[1], new_features.shape[1], cfg.transform).to(device)
    prepared = nn.ModuleDict({name: ray.train.torch.prepare_model(t) for name, t in transforms.items()})
    mapped = prepared if worker.precision is None else nn.ModuleDict(
        {name: Autocast(t, worker.precision, device) for name, t in prepared.items()})

    draws = torch.Generator().manual_seed(cfg.seed + 7919 * worker.rank)  # the retrieval terms' gallery rows

    def terms(batch: torch.Tensor) -> dict[str, torch.Tensor]:
        memory = None
        if method.searches_rows:  # a sample of this worker's rows, with the batch's own, as the gallery
            chosen, own = memory_rows(len(labels), batch, cfg.compat.retrieval.memory, draws)
            memory = RetrievalMemory(old_features[chosen].to(device), new_features[chosen].to(device),
                                     labels[chosen].to(device), own.to(device))
        return cmc_terms(method, old_features[batch].to(device), new_features[batch].to(device),
                         labels[batch].to(device), old_space, new_space, cfg.compat, mapped, memory)

    return WorkerFit(f"cmc {cfg.name!r}", transforms, prepared, len(labels), terms,
                     lambda batch: f"batch ids {ids[batch[:8].numpy()].tolist()}...")


def _paired_features(old_set: EmbeddingSet, new_set: EmbeddingSet, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both models' features of the same images: ``rows`` index ``new_set``; ids join the two."""
    if len(old_set.ids) != len(new_set.ids):
        raise ValueError(f"{old_set.path} ({len(old_set.ids)} rows) and {new_set.path} ({len(new_set.ids)} rows) "
                         "do not hold the same images")
    return old_set.vectors_of(new_set.ids[rows]), new_set.vectors[rows]


def _trained_on(card: EncoderCard) -> TrainConfig:
    """Which rows model 2 trained on: its training config, or for an imported model every
    training image of its classes."""
    if isinstance(card, ModelCard):
        return TrainConfig.model_validate(card.train_config)
    return TrainConfig(name=card.name, classes=card.classes)


@dataclass(frozen=True)
class CmcFiles:
    """Where a CMC fit writes what its workers read: both models' features of the rows model 2
    trained on, and each space's statistics over them."""

    features: Path
    old_space: Path
    new_space: Path


def write_inputs(cfg: CmcConfig, cards: tuple[EncoderCard, EncoderCard], sets: tuple[EmbeddingSet, EmbeddingSet],
                 dataset: Path, files: CmcFiles) -> dict[str, Any]:
    """What the workers read, written to ``files``: both models' features of the rows model 2
    trained on (from their train-split embeddings ``sets``) and each space's statistics over
    them; the label map and the two dimensions."""
    rows, labels, classes = training_rows(sets[1], dataset, _trained_on(cards[1]))
    old_features, new_features = _paired_features(sets[0], sets[1], rows)
    paths = {"features": files.features}
    for role, features, known in (("old", old_features, cards[0].classes), ("new", new_features, classes)):
        stats = compute_old_space_stats(features, labels, classes, known, cfg.compat.boundary,
                                        cfg.compat.boundary_quantile)
        if method_of(cfg).bounds_features and cfg.compat.lambda_boundary > 0:
            margin = cfg.compat.forward_margin if role == "new" else cfg.compat.compactness_margin
            warn_margin(stats, margin, cfg.compat.old_classes_only, role)
        paths[f"{role}_space"] = files.old_space if role == "old" else files.new_space
        stats.save(paths[f"{role}_space"])
    write_npz_atomic(paths["features"], old=old_features, new=new_features, labels=labels,
                     ids=sets[1].ids[rows].astype(str))
    return {"paths": {key: str(path) for key, path in paths.items()}, "classes": classes,
            "dims": (int(old_features.shape[1]), int(new_features.shape[1])), "rows": len(rows)}


def fit_cmc(cfg: CmcConfig, old_model: str | Path, new_model: str | Path, dataset: str | Path,
            artifact_dir: str | Path, context: RunContext, *, train_sets: tuple[EmbeddingSet, EmbeddingSet],
            files: CmcFiles, run_name: str | None = None) -> Path:
    """Fit ``cfg``'s transformations between two model artifacts, from their training-split
    embeddings ``train_sets`` (old, new), and write the CMC artifact; ``files`` says where what
    the workers read goes (``write_inputs``)."""
    check_name(cfg.name, "cmc name")
    folders = (Path(old_model).resolve(), Path(new_model).resolve())
    dataset, artifact_dir = Path(dataset).resolve(), Path(artifact_dir).resolve()
    cards = (read_encoder_card(folders[0]), read_encoder_card(folders[1]))
    inputs = write_inputs(cfg, cards, train_sets, dataset, files)
    hashed = {**inputs["paths"], "old_id": cards[0].id, "new_id": cards[1].id}
    read = CmcInputs(config=cfg, method=method_of(cfg), record=RunRecord(config_hash(cfg, hashed)), **inputs["paths"])
    job = FitJob(cfg, cmc_worker, read,
                 {"kind": "cmc", "method": cfg.method, "old_model": cards[0].name, "new_model": cards[1].name,
                  DESCRIPTION_TAG: f"Fits {cfg.method}'s transformations between {cards[0].name} (old) and "
                                   f"{cards[1].name} (new) on {inputs['rows']} images of {dataset.name}"},
                 dataset=str(dataset))
    log.info("cmc %s: %s between %s and %s on %d images", cfg.name, cfg.method, cards[0].name, cards[1].name,
             inputs["rows"])

    def write(result: ray.train.Result, run_id: str) -> Path:
        refs = [ModelRef(name=card.name, id=card.id, dir=str(folder), dim=dim)
                for card, folder, dim in zip(cards, folders, inputs["dims"])]
        card = CmcCard(id=new_model_id(cfg.name), name=cfg.name, method=cfg.method, transform=cfg.transform,
                       old_model=refs[0], new_model=refs[1], classes=inputs["classes"], config=cfg.model_dump(),
                       metrics=result.metrics, mlflow_run_id=run_id)
        return write_artifact(artifact_dir, final_weights(result), card)

    return run_fit(job, context, run_name, write, artifact_path="cmc")
