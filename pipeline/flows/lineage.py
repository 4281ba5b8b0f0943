"""A lineage v1 -> v2 -> ... trained, registered and reported: each model after the first fitted
against the one before it (``pipeline.flows.fits.fit_against``), registered as the next version,
then the report over the registry's versions, under the workspace's ``registry/``:

    registry/models/v<version>/         each version's artifact, downloaded from the registry
    registry/embeddings/<entry>/<split>/  each model's and transformed entry's embeddings
                                        (``selection``: the training split's selection rows)
    registry/report/                    report.{parquet,csv}; lineage.csv (AC and AM per metric);
                                        backfill.csv; verdicts.json (each new model's verdict, the
                                        numbers behind it, how its route and order were chosen);
                                        verdicts.md; heatmap_<metric>.png; indexes.csv;
                                        backfill.png, indexes.png, summary.md

MLflow: one run per report (params: registered model, versions, split, index), every cell as a
metric ``<metric>/<query>/<gallery>``, AC/AM, gains and backfill areas as metrics, verdicts as
tags, the files as artifacts; under it one nested run per pair (``pipeline.lineage.runs``).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from pipeline.config import SELECTION_FRACTION, EncodeConfig, LineageConfig, MixedIndexConfig, RunContext, ScoreConfig
from pipeline.data.embeddings import open_embeddings
from pipeline.data.importers import ensure_dataset
from pipeline.encode.mapped import matrix_entries
from pipeline.encode.split import encode_split
from pipeline.flows.fits import fit_against
from pipeline.flows.workspace import Workspace
from pipeline.lineage.files import write_report_files
from pipeline.lineage.metrics import LineageModel
from pipeline.lineage.registry import download_version, register_model, registered_chain
from pipeline.lineage.report import (
    LineageReport,
    check_dimensions,
    choose_on_selection,
    chosen_without_selection,
    measure_lineage,
    scored_metrics,
    selection_rows,
)
from pipeline.lineage.runs import log_lineage_report
from pipeline.score import Gallery, MatrixEntry
from pipeline.tracking import experiment_id

log = logging.getLogger(__name__)


def run_lineage(cfg: LineageConfig) -> LineageReport:
    """Train the lineage's models in order, each against the one before it, register each as the
    next version, then report the chain."""
    workspace = Workspace.at(cfg.output_dir)
    context = workspace.context(cfg.mlflow)
    dataset = ensure_dataset(cfg.data, cfg.models[0].seed)
    tag = time.strftime("%Y%m%d-%H%M%S")
    experiment_id(context.tracking_uri, context.experiment)
    parent, version, versions = None, None, []
    for model in cfg.models:
        folder = fit_against(workspace, model, parent, dataset, context, encode=cfg.encode,
                             run_name=f"{model.name}-{tag}")
        version = register_model(context.tracking_uri, cfg.registered_model, folder,
                                 version.version if version else None, context.experiment)
        parent = model.name
        versions.append(version.version)
    return report_registered_lineage(context, cfg.registered_model, versions, dataset, workspace.registry,
                                     encode=cfg.encode, score=cfg.score, backfill_steps=cfg.backfill_steps,
                                     indexes=cfg.indexes, selection_fraction=cfg.selection_fraction)


def lineage_embeddings(model: LineageModel, dataset: str | Path, split: str, workspace: Workspace,
                       encode: EncodeConfig) -> Path:
    """``model``'s embeddings of ``split`` (``encode_split`` reuses those already written)."""
    return encode_split(model.folder, dataset, split, workspace.embeddings(model.name, split), encode)


def lineage_entries(models: list[LineageModel], sets: dict[str, Gallery], embeddings_root: Path,
                    split: str) -> dict[str, MatrixEntry]:
    """Each model's own entry, plus the entries its transformations make against its parent
    (``pipeline.encode.mapped``: its T21 queries, its parent's gallery through its T12)."""
    entries: dict[str, MatrixEntry] = {}
    for model in models:
        pair = {name: sets[name] for name in (model.name, model.parent) if name}
        found = matrix_entries({model.name: model.folder} if model.parent else {}, pair, model.parent or model.name,
                               embeddings_root, split)
        entries = {**found, **entries}  # a model's own entry stays as first made
    return entries


def run_lineage_report(models: list[LineageModel], dataset: str | Path, workspace: Workspace, context: RunContext, *,
                       registered_model: str = "", encode: EncodeConfig = EncodeConfig(),
                       score: ScoreConfig = ScoreConfig(), backfill_steps: int = 10,
                       indexes: MixedIndexConfig = MixedIndexConfig(), seed: int = 0,
                       selection_fraction: float = SELECTION_FRACTION) -> LineageReport:
    """Encode, choose each new model's route and backfill order on the training split's
    selection rows, score every pair of the scored split, compute the lineage metrics, write the
    report and log it."""
    if len(models) < 2:
        raise ValueError(f"a lineage report needs at least two models, got {[m.name for m in models]}")
    dataset, split = Path(dataset).resolve(), score.split
    workspace.report.mkdir(parents=True, exist_ok=True)
    sets: dict[str, Gallery] = {m.name: open_embeddings(lineage_embeddings(m, dataset, split, workspace, encode))
                                for m in models}
    check_dimensions(models, sets)
    entries = lineage_entries(models, sets, workspace.embeddings_root, split)
    if split == "test":  # route and order are chosen on the training split, never on the gallery they are judged on
        training = {m.name: open_embeddings(lineage_embeddings(m, dataset, "train", workspace, encode)) for m in models}
        loaded, mask, chosen = selection_rows(models, training, score, selection_fraction)
        selection = lineage_entries(models, chosen, workspace.embeddings_root, "selection")
        choices = choose_on_selection(models, loaded, mask, chosen, selection, score, backfill_steps, seed)
    else:
        log.warning("lineage: the %s split is both the gallery and the only split to choose on; each model is judged "
                    "on its method's own route and the backfill order is random", split)
        choices = chosen_without_selection(models, entries, scored_metrics(score),
                                           f"the scored split is the {split} split: nothing left to choose on")
    measures = measure_lineage(models, entries, sets, choices, score, backfill_steps, indexes, seed)
    files = write_report_files(measures, workspace.report, indexes.min_recall, score.interval_level)
    run_id = log_lineage_report(measures, files, context, {
        "registered_model": registered_model, "models": ",".join(measures.order), "split": split,
        "index": score.index.kind, "full_ranking": str(score.full_ranking)})
    log.info("lineage: report in %s, MLflow run %s", workspace.report, run_id)
    return LineageReport(workspace.report, run_id, measures.table, measures.summary, measures.verdicts,
                         (workspace.report / "summary.md").read_text())


def report_registered_lineage(context: RunContext, registered_model: str, versions: list[str] | None,
                              dataset: str | Path, workspace: Workspace, **options: Any) -> LineageReport:
    """``run_lineage_report`` over the registry's chain of versions (``pipeline.lineage.registry``),
    each version's artifact downloaded to ``workspace.model("v<version>")`` and named so."""
    chain = registered_chain(context.tracking_uri, registered_model, versions)
    models = [LineageModel(f"v{v.version}", download_version(context.tracking_uri, v, workspace.model(f"v{v.version}")),
                           f"v{v.parent}" if i else None) for i, v in enumerate(chain)]
    return run_lineage_report(models, dataset, workspace, context, registered_model=registered_model, **options)
