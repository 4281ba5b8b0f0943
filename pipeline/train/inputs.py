"""What a fit reads besides images: the rows of a model's training-split embeddings that a new
model trains on, and the old-space statistics over them (centers and boundaries)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from pipeline.compat.statistics import compute_old_space_stats
from pipeline.config import TrainConfig
from pipeline.data.dataset import class_indices, in_fraction, in_validation, read_dataset_info, share_with_rows
from pipeline.data.embeddings import EmbeddingSet
from pipeline.model.card import read_encoder_card
from pipeline.model.encoders import old_classifier

log = logging.getLogger(__name__)


def training_rows(embeddings: EmbeddingSet, dataset: str | Path,
                  cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The rows of a train-split embedding set that ``cfg`` trains on, in id order (float sums
    over them then do not depend on file order), their labels in ``cfg``'s label map, and that map."""
    info = read_dataset_info(dataset)
    if embeddings.classes != info.classes:
        raise ValueError(f"{embeddings.path}: encoded from a dataset with classes {embeddings.classes}, "
                         f"not {dataset} ({info.classes})")
    kept = class_indices(info.classes, cfg.classes)
    fraction = share_with_rows(cfg.data_fraction, cfg.min_rows, int(np.isin(embeddings.labels, kept).sum()))
    rows = np.array([index for index in np.argsort(embeddings.ids, kind="stable")
                     if embeddings.labels[index] in kept
                     and in_fraction(embeddings.ids[index], fraction, cfg.seed)
                     and not in_validation(embeddings.ids[index], cfg.validation_fraction)], dtype=np.int64)
    to_model_label = {dataset_label: index for index, dataset_label in enumerate(kept)}
    labels = np.array([to_model_label[int(y)] for y in embeddings.labels[rows]], dtype=np.int64)
    return rows, labels, [info.classes[i] for i in kept]


def stats_for_model(cfg: TrainConfig, old_model: str | Path, embeddings: EmbeddingSet, dataset: str | Path,
                    out_path: str | Path) -> Path:
    """Statistics over the rows ``cfg`` trains on, for every class of its label map."""
    rows, labels, classes = training_rows(embeddings, dataset, cfg)
    old_classes = read_encoder_card(old_model).classes
    classifier_rows = None
    if cfg.compat.centers == "classifier":
        weight, _ = old_classifier(old_model)
        if weight is None:
            raise ValueError(f"model {cfg.name!r}: compat.centers 'classifier' needs the old model's classifier, and "
                             f"{old_model} has none (an imported model's source.classifier)")
        classifier_rows = {name: weight[i].numpy() for i, name in enumerate(old_classes) if name in classes}
    stats = compute_old_space_stats(embeddings.vectors[rows], labels, classes, old_classes,
                                    cfg.compat.boundary, cfg.compat.boundary_quantile, classifier_rows)
    stats.save(out_path)
    log.info("stats for %s: %d classes from %d images, boundary %s (median %.1f deg) -> %s", cfg.name, len(classes),
             len(rows), cfg.compat.boundary, float(np.degrees(np.median(stats.boundaries))), out_path)
    return Path(out_path)
