"""The lineage report: every model pair of v1 -> v2 -> ... encoded and scored, AC/AM, update gains,
backfill curves (``pipeline.lineage.backfill``), a verdict per new model, written as files
(``pipeline.lineage.files``) and logged to MLflow (``pipeline.lineage.runs``).

Files under ``out_dir``:

    embeddings/<model>/<split>/   each model's embeddings (kept when already encoded by that model)
    embeddings/<entry>/<split>/   transformed entries (a model's T21, its parent's gallery through its T12)
    report/report.{parquet,csv}   one row per scored pair (pipeline.score.matrix)
    report/lineage.csv            AC and AM per metric
    report/backfill.csv           backfill curves: model, order, share, metrics
    report/verdicts.json          one verdict per new model, with the numbers behind it
    report/heatmap_<metric>.png   the N x N matrix per metric, numbers in the cells
    report/indexes.csv            approximate indexes on the gallery mixed in the recommended order
    report/backfill.png, report/indexes.png, report/summary.md

MLflow: one run per report (params: registered model, versions, split, index), every cell as a
metric ``<metric>/<query>/<gallery>``, AC/AM, gains and backfill areas as metrics, verdicts as
tags, the files as artifacts; under it one nested run per pair with params ``query_model``,
``gallery_model``, ``transform`` and the pair's metrics, so the MLflow UI's run table lists,
sorts and compares pairs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.compat.methods import t12_entry, t21_entry
from pipeline.config import EncodeConfig, MixedIndexConfig, RunContext, ScoreConfig
from pipeline.data.embeddings import open_embeddings
from pipeline.encode.mapped import matrix_entries
from pipeline.encode.split import encode_split
from pipeline.lineage.backfill import (
    backfill_orders,
    child_backfill,
    child_indexes,
    child_sets,
    share_for_gain,
    share_to_reach,
)
from pipeline.lineage.files import recommended_order, write_report_files
from pipeline.lineage.metrics import LineageModel, Verdict, lower_triangle_summary, verdict
from pipeline.lineage.registry import download_version, registered_chain
from pipeline.lineage.runs import log_lineage_report
from pipeline.model.card import read_model_card
from pipeline.score.criteria import CRITERION_METRICS, pair_row, update_gain
from pipeline.score.entries import MatrixEntry, MatrixRoles
from pipeline.score.matrix import Gallery, matrix, score_all_pairs
from pipeline.tracking import metric_key

log = logging.getLogger(__name__)
MATRIX_METRICS = ("top1", "top5", "map", "map_at_r")


@dataclass(frozen=True)
class LineageReport:
    report_dir: Path
    run_id: str
    table: pd.DataFrame
    summary: pd.DataFrame   # AC and AM per metric
    verdicts: list[Verdict]
    summary_text: str


def lineage_embeddings(model: LineageModel, dataset: str | Path, split: str, out_dir: Path,
                       encode: EncodeConfig) -> Path:
    """``model``'s embeddings of ``split`` (``encode_split`` reuses those already written)."""
    return encode_split(model.folder, dataset, split, out_dir / "embeddings" / model.name / split, encode)


def _entries(models: list[LineageModel], sets: dict[str, Gallery], out_root: Path,
             split: str) -> dict[str, MatrixEntry]:
    """Each model's own entry, plus the entries its transformations make against its parent
    (``pipeline.encode.mapped``: its T21 queries, its parent's gallery through its T12)."""
    entries: dict[str, MatrixEntry] = {}
    for model in models:
        pair = {name: sets[name] for name in (model.name, model.parent) if name}
        found = matrix_entries({model.name: model.folder} if model.parent else {}, pair, model.parent or model.name,
                               out_root, split)
        entries = {**found, **entries}  # a model's own entry stays as first made
    return entries


def _pairs(models: list[LineageModel], entries: dict[str, MatrixEntry]) -> list[tuple[str, str]]:
    """Every ordered pair of the lineage's models, and each transformed entry with its counterpart."""
    plain = [m.name for m in models]
    pairs = [(q, g) for q in plain for g in plain]
    for name, entry in entries.items():
        if entry.transform == "none":
            continue
        pairs.append((name, entry.counterpart) if entry.reference == name else (entry.counterpart, name))
    return [(q, g) for q, g in pairs if entries[q].embeddings.dim == entries[g].embeddings.dim]


def run_lineage_report(models: list[LineageModel], dataset: str | Path, out_dir: str | Path, context: RunContext, *,
                       registered_model: str = "", encode: EncodeConfig = EncodeConfig(),
                       score: ScoreConfig = ScoreConfig(), backfill_steps: int = 10,
                       indexes: MixedIndexConfig = MixedIndexConfig(), seed: int = 0) -> LineageReport:
    """Encode, score every pair, compute the lineage metrics, write the report and log it."""
    if len(models) < 2:
        raise ValueError(f"a lineage report needs at least two models, got {[m.name for m in models]}")
    dataset, out_dir, split = Path(dataset).resolve(), Path(out_dir), score.split
    report_dir = out_dir / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    sets: dict[str, Gallery] = {m.name: open_embeddings(lineage_embeddings(m, dataset, split, out_dir, encode))
                                for m in models}
    # the predicted backfill order learns on the training split, never on the gallery it orders
    training = ({m.name: open_embeddings(lineage_embeddings(m, dataset, "train", out_dir, encode)) for m in models}
                if split == "test" else None)
    if training is None:
        log.warning("lineage: the %s split is both the gallery and where a predicted order would learn; the "
                    "backfill curves leave the predicted order out", split)
    for child in models[1:]:
        if sets[child.name].dim != sets[child.parent].dim:
            raise ValueError(f"{child.name} ({sets[child.name].dim}-d) and its parent {child.parent} "
                             f"({sets[child.parent].dim}-d) differ in dimension: a lineage report compares every "
                             "model with its parent directly")
    entries = _entries(models, sets, out_dir / "embeddings", split)
    order = [m.name for m in models]
    table = score_all_pairs(entries, MatrixRoles(old_classes=read_model_card(models[0].folder).classes), score,
                            pairs=_pairs(models, entries))
    metrics = [m for m in MATRIX_METRICS if m in table.columns]
    summary = pd.DataFrame([{"metric": m, **dict(zip(("AC", "AM"), lower_triangle_summary(
        matrix(table, m, order).to_numpy())))} for m in metrics])

    cell = partial(pair_row, table)
    verdicts, gains, backfills, index_tables = [], {}, [], []
    scored = [m for m in CRITERION_METRICS if m in table.columns]
    for child in models[1:]:
        t21, t12 = t21_entry(child.name), t12_entry(child.parent, child.name)
        decided = verdict(child.name, child.parent, cell, t21 if t21 in entries else None,
                          t12 if t12 in entries else None)
        for m in scored:
            gains[metric_key("update_gain", m, child.name)] = update_gain(
                cell(child.name, child.parent)[m], cell(child.parent, child.parent)[m], cell(child.name, child.name)[m])
        query, parent = child_sets(child, sets)
        orders = backfill_orders(child, query, parent, seed, child_sets(child, training) if training else None)
        curves = child_backfill(child, query, parent, orders, backfill_steps, score.full_ranking)
        if indexes.steps:
            chosen, _, _ = recommended_order(curves, child.name)
            index_tables.append(child_indexes(child, query, parent, orders[chosen], indexes).assign(order=chosen))
        parent_own = {m: cell(child.parent, child.parent)[m] for m in scored}
        needed = {f"share_to_beat_parent/{name}": share_to_reach(curve, parent_own)
                  for name, curve in curves.groupby("order", sort=False)}
        needed |= {f"share_for_95pct_gain/{name}": share_for_gain(curve, scored)
                   for name, curve in curves.groupby("order", sort=False)}
        verdicts.append(replace(decided, numbers={**decided.numbers, **needed}))
        backfills.append(curves)
    backfill = pd.concat(backfills, ignore_index=True)
    index_table = pd.concat(index_tables, ignore_index=True) if index_tables else pd.DataFrame()
    files = write_report_files(table, summary, backfill, verdicts, order, report_dir, index_table, indexes.min_recall)
    text = (report_dir / "summary.md").read_text()
    run_id = log_lineage_report(table, summary, backfill, verdicts, gains, index_table, files, order,
                                context.tracking_uri,
                            context.experiment, {"registered_model": registered_model, "models": ",".join(order),
                                                 "split": split, "index": score.index.kind,
                                                 "full_ranking": str(score.full_ranking)})
    log.info("lineage: report in %s, MLflow run %s", report_dir, run_id)
    return LineageReport(report_dir, run_id, table, summary, verdicts, text)


def report_registered_lineage(context: RunContext, registered_model: str, versions: list[str] | None,
                              dataset: str | Path, out_dir: str | Path, **options: Any) -> LineageReport:
    """``run_lineage_report`` over the registry's chain of versions (``pipeline.lineage.registry``), each
    version's artifact downloaded to ``out_dir/models/v<version>`` and named ``v<version>``."""
    tracking_uri = context.tracking_uri
    chain, folder = registered_chain(tracking_uri, registered_model, versions), Path(out_dir) / "models"
    models = [LineageModel(f"v{v.version}", download_version(tracking_uri, v, folder / f"v{v.version}"),
                           f"v{v.parent}" if i else None) for i, v in enumerate(chain)]
    return run_lineage_report(models, dataset, out_dir, context, registered_model=registered_model, **options)
