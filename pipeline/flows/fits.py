"""A model trained against its parent, the one sequence every flow runs: the parent's
training-split embeddings, the old-space statistics over them when the method needs them, then
the fit, with the parent's features where the method reads them by id."""

from __future__ import annotations

from pathlib import Path

from pipeline.compat.methods import method_of
from pipeline.config import EncodeConfig, RunContext, TrainConfig
from pipeline.data.embeddings import EmbeddingSet
from pipeline.encode.split import train_split_embeddings
from pipeline.flows.workspace import Workspace
from pipeline.train.inputs import stats_for_model
from pipeline.train.training import fit_model


def reads_parent_embeddings(cfg: TrainConfig) -> bool:
    """Whether ``cfg``'s fit reads its parent's training-split embeddings: for the statistics, or
    for the features its method reads by id."""
    method = method_of(cfg)
    return method.needs_old_model and (method.needs_statistics or method.reads_old_features(cfg.compat))


def parent_inputs(workspace: Workspace, cfg: TrainConfig, parent: str, dataset: Path,
                  encode: EncodeConfig = EncodeConfig(), embeddings: EmbeddingSet | None = None
                  ) -> tuple[EmbeddingSet | None, Path | None]:
    """What ``cfg``'s method reads of ``parent`` (a model of ``workspace``): the parent's
    training-split embeddings (``embeddings`` when the caller read them already; else encoded
    once, then reused) and the statistics over them, each None where the method needs none."""
    if not reads_parent_embeddings(cfg):
        return None, None
    folder = workspace.model(parent)
    embeddings = embeddings or train_split_embeddings(folder, dataset, workspace.embeddings(parent, "train"), encode)
    stats = (stats_for_model(cfg, folder, embeddings, dataset, workspace.statistics(cfg.name))
             if method_of(cfg).needs_statistics else None)
    return embeddings, stats


def fit_against(workspace: Workspace, cfg: TrainConfig, parent: str | None, dataset: Path, context: RunContext, *,
                encode: EncodeConfig = EncodeConfig(), run_name: str | None = None,
                parent_embeddings: EmbeddingSet | None = None) -> Path:
    """``cfg`` trained into ``workspace.model(cfg.name)``; against ``parent`` (a model of the same
    workspace, recorded as the fit's parent) where its method needs an old model
    (``parent_embeddings``: its training-split set, when read already)."""
    method = method_of(cfg)
    if parent is None or not method.needs_old_model:
        return fit_model(cfg, dataset, workspace.model(cfg.name), context, run_name=run_name, parent=parent)
    embeddings, stats = parent_inputs(workspace, cfg, parent, dataset, encode, parent_embeddings)
    old_features = embeddings.path if embeddings is not None and method.reads_old_features(cfg.compat) else None
    return fit_model(cfg, dataset, workspace.model(cfg.name), context, run_name=run_name,
                     old_model=workspace.model(parent), stats=stats, parent=parent, old_features=old_features)
