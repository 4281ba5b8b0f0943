"""A lineage trained, registered and reported: models v1 -> v2 -> ... fitted one after the other."""

from __future__ import annotations

import time
from pathlib import Path

from pipeline.compat.methods import method_of
from pipeline.config import LineageConfig, TrainConfig
from pipeline.data.importers import ensure_dataset
from pipeline.lineage.registry import register_model
from pipeline.lineage.report import LineageReport, report_registered_lineage
from pipeline.tracking import experiment_id
from pipeline.train.inputs import stats_for_model, train_split_embeddings
from pipeline.train.training import fit_model


def run_lineage(cfg: LineageConfig) -> LineageReport:
    """Train the lineage's models in order (each against the one before it, with old-space
    statistics from that parent when its method needs them), register each as the next
    version, then report the chain."""
    out = Path(cfg.output_dir).resolve()
    context = cfg.run_context()
    dataset = ensure_dataset(cfg.data, cfg.models[0].seed)
    tag = time.strftime("%Y%m%d-%H%M%S")
    experiment_id(context.tracking_uri, context.experiment)
    parent: tuple[TrainConfig, Path, str] | None = None  # config, artifact, registered version
    versions = []
    for model in cfg.models:
        stats, embeddings = None, None
        if parent is not None and method_of(model).needs_statistics:
            embeddings = train_split_embeddings(parent[1], dataset, out / "embeddings" / parent[0].name / "train",
                                                cfg.encode)
            stats = stats_for_model(model, parent[1], embeddings, dataset, out / "stats" / f"{model.name}.npz")
        folder = fit_model(model, dataset, out / "models" / model.name, context, run_name=f"{model.name}-{tag}",
                           old_model=parent[1] if parent else None, stats=stats,
                           parent=parent[0].name if parent else None,
                           old_features=embeddings.path if method_of(model).reads_old_features(model.compat) else None)
        version = register_model(context.tracking_uri, cfg.registered_model, folder, parent[2] if parent else None,
                                 context.experiment)
        parent = (model, folder, version.version)
        versions.append(version.version)
    return report_registered_lineage(context, cfg.registered_model, versions, dataset, out / "registry",
                                     encode=cfg.encode, score=cfg.score, backfill_steps=cfg.backfill_steps,
                                     indexes=cfg.indexes, selection_fraction=cfg.selection_fraction)
