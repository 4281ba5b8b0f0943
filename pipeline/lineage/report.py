"""The lineage report: every model pair of v1 -> v2 -> ... encoded and scored, AC/AM, update gains,
backfill curves (``pipeline.lineage.backfill``), a verdict per new model, written as files
(``pipeline.lineage.files``) and logged to MLflow (``pipeline.lineage.runs``).

Files under ``out_dir``:

    embeddings/<model>/<split>/   each model's embeddings (kept when already encoded by that model)
    embeddings/<entry>/<split>/   transformed entries (a model's T21, its parent's gallery through its T12)
    report/report.{parquet,csv}   one row per scored pair (pipeline.score.matrix)
    report/lineage.csv            AC and AM per metric
    report/backfill.csv           backfill curves: model, order, share, metrics
    report/verdicts.json          one verdict per new model, with the numbers behind it and how its route
                                  and backfill order were chosen (pipeline.lineage.selection)
    report/verdicts.md            each judged pair's decision and intervals
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

from pipeline.compat.methods import Route, method_named, t12_entry, t21_entry
from pipeline.config import SELECTION_FRACTION, EncodeConfig, MixedIndexConfig, RunContext, ScoreConfig
from pipeline.data.embeddings import open_embeddings
from pipeline.encode.mapped import matrix_entries
from pipeline.encode.split import encode_split
from pipeline.lineage.backfill import (
    backfill_orders,
    child_backfill,
    child_indexes,
    child_sets,
    order_predictor,
    share_for_gain,
    share_to_reach,
)
from pipeline.lineage.files import write_report_files
from pipeline.lineage.metrics import LineageModel, Verdict, lower_triangle_summary, verdict
from pipeline.lineage.orders import BenefitPredictor
from pipeline.lineage.registry import download_version, registered_chain
from pipeline.lineage.runs import log_lineage_report
from pipeline.lineage.selection import (
    RANDOM_DRAWS,
    Candidate,
    OrderChoice,
    RouteChoice,
    choose_order,
    choose_route,
    default_route,
    selection_mask,
    subset,
)
from pipeline.model.card import read_model_card
from pipeline.score.criteria import CRITERION_METRICS, pair_row, update_gain
from pipeline.score.entries import MatrixEntry, MatrixRoles
from pipeline.score.matrix import matrix, score_all_pairs
from pipeline.score.pairs import Gallery
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

    @property
    def decisions(self) -> str:
        """One line per new model: its decision and the route it rests on (a job's last lines)."""
        return "\n".join(f"decision: {v.model} (parent {v.parent}): {v.statement}, on {v.route}"
                         for v in self.verdicts)


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


@dataclass(frozen=True)
class Choices:
    """What is chosen for one new model before the scored split is read (``pipeline.lineage.selection``)."""

    route: RouteChoice
    order: OrderChoice
    predictor: BenefitPredictor | None  # the predicted order's regression (fitted off the selection rows)


def _candidates(child: LineageModel, entries: dict) -> list[Candidate]:
    """The child's routes against its parent's gallery that the report has entries for."""
    found = [Candidate(Route.DIRECT, child.name, child.parent)]
    t21, t12 = t21_entry(child.name), t12_entry(child.parent, child.name)
    if t21 in entries:
        found.append(Candidate(Route.T21, t21, child.parent))
    if t12 in entries:
        found.append(Candidate(Route.T12, child.name, t12))
    return found


def _chosen_without_selection(models: list[LineageModel], entries: dict, metrics: list[str], why: str
                              ) -> dict[str, Choices]:
    """Each child's method's own route and the random order, when there are no selection rows."""
    choices = {}
    for child in models[1:]:
        route = method_named(read_model_card(child.folder).method).judged_route
        choices[child.name] = Choices(default_route(_candidates(child, entries), route, why),
                                      OrderChoice("random", metrics[-1], {}, f"random ({why})"), None)
    return choices


def _choose_on_selection(models: list[LineageModel], training: dict[str, Gallery], out_dir: Path,
                         score: ScoreConfig, steps: int, fraction: float, seed: int) -> dict[str, Choices]:
    """Each child's route and backfill order, chosen on the selection rows of the training split:
    its routes scored there against the parent's own pair, the backfill curves of random (several
    draws), stratified and predicted orders there (the predictor fitted on the other rows)."""
    loaded = {m.name: training[m.name].load() for m in models}
    mask = selection_mask(loaded[models[0].name].ids, fraction)
    rows = int(mask.sum())
    if rows <= max(score.topk):
        raise ValueError(f"lineage: {rows} selection rows of the training split at fraction {fraction} (need more "
                         f"than k = {max(score.topk)}); raise lineage.selection_fraction")
    chosen = {name: subset(found, mask, "selection rows") for name, found in loaded.items()}
    entries = _entries(models, chosen, out_dir / "embeddings", "selection")
    candidates = {child.name: _candidates(child, entries) for child in models[1:]}
    pairs = list(dict.fromkeys(pair for child in models[1:] for pair in
                               [(child.parent, child.parent)] + [(c.query, c.gallery) for c in candidates[child.name]]))
    table = score_all_pairs(entries, MatrixRoles(old_classes=read_model_card(models[0].folder).classes), score,
                            pairs=pairs)
    metrics = [m for m in CRITERION_METRICS if m in table.columns]
    choices = {}
    for child in models[1:]:
        route = choose_route(candidates[child.name], {c.pair: pair_row(table, c.query, c.gallery)
                                                      for c in candidates[child.name]}, rows)
        query, parent = child_sets(child, chosen)
        predictor = order_predictor(loaded[child.name], loaded[child.parent], mask)
        orders = backfill_orders(child, query, parent, seed, predictor, random_draws=RANDOM_DRAWS, oracle=False)
        _, areas = child_backfill(child, query, parent, orders, steps, score.full_ranking)
        order = choose_order(areas, [name for name in orders if name.startswith("random-")], metrics,
                             score.bootstrap_resamples or 1000, score.interval_level)
        log.info("lineage: %s judged on %s (%s); backfill order %s (%s)", child.name, route.candidate.pair,
                 route.reason, order.order, order.reason)
        choices[child.name] = Choices(route, order, predictor)
    return choices


def run_lineage_report(models: list[LineageModel], dataset: str | Path, out_dir: str | Path, context: RunContext, *,
                       registered_model: str = "", encode: EncodeConfig = EncodeConfig(),
                       score: ScoreConfig = ScoreConfig(), backfill_steps: int = 10,
                       indexes: MixedIndexConfig = MixedIndexConfig(), seed: int = 0,
                       selection_fraction: float = SELECTION_FRACTION) -> LineageReport:
    """Encode, choose each new model's route and backfill order on the training split's
    selection rows, score every pair of the scored split, compute the lineage metrics, write the
    report and log it."""
    if len(models) < 2:
        raise ValueError(f"a lineage report needs at least two models, got {[m.name for m in models]}")
    dataset, out_dir, split = Path(dataset).resolve(), Path(out_dir), score.split
    report_dir = out_dir / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    sets: dict[str, Gallery] = {m.name: open_embeddings(lineage_embeddings(m, dataset, split, out_dir, encode))
                                for m in models}
    for child in models[1:]:
        if sets[child.name].dim != sets[child.parent].dim:
            raise ValueError(f"{child.name} ({sets[child.name].dim}-d) and its parent {child.parent} "
                             f"({sets[child.parent].dim}-d) differ in dimension: a lineage report compares every "
                             "model with its parent directly")
    entries = _entries(models, sets, out_dir / "embeddings", split)
    scored = [m for m in CRITERION_METRICS if m != "map" or score.full_ranking]  # mAP needs the full ranking
    if split == "test":  # route and order are chosen on the training split, never on the gallery they are judged on
        training = {m.name: open_embeddings(lineage_embeddings(m, dataset, "train", out_dir, encode)) for m in models}
        choices = _choose_on_selection(models, training, out_dir, score, backfill_steps, selection_fraction, seed)
    else:
        log.warning("lineage: the %s split is both the gallery and the only split to choose on; each model is judged "
                    "on its method's own route and the backfill order is random", split)
        choices = _chosen_without_selection(models, entries, scored,
                                            f"the scored split is the {split} split: nothing left to choose on")
    order = [m.name for m in models]
    table = score_all_pairs(entries, MatrixRoles(old_classes=read_model_card(models[0].folder).classes), score,
                            pairs=_pairs(models, entries))
    metrics = [m for m in MATRIX_METRICS if m in table.columns]
    summary = pd.DataFrame([{"metric": m, **dict(zip(("AC", "AM"), lower_triangle_summary(
        matrix(table, m, order).to_numpy())))} for m in metrics])

    cell = partial(pair_row, table)
    verdicts, gains, backfills, index_tables = [], {}, [], []
    for child in models[1:]:
        chosen = choices[child.name]
        route = chosen.route.candidate
        decided = verdict(child.name, child.parent, cell, route.query, route.gallery, route.route is Route.T12,
                          chosen.route.reason)
        for m in scored:
            gains[metric_key("update_gain", m, child.name)] = update_gain(
                cell(child.name, child.parent)[m], cell(child.parent, child.parent)[m], cell(child.name, child.name)[m])
        query, parent = child_sets(child, sets)
        orders = backfill_orders(child, query, parent, seed, chosen.predictor)
        curves, _ = child_backfill(child, query, parent, orders, backfill_steps, score.full_ranking)
        if indexes.steps:
            index_tables.append(child_indexes(child, query, parent, orders[chosen.order.order], indexes)
                                .assign(order=chosen.order.order))
        parent_own = {m: cell(child.parent, child.parent)[m] for m in scored}
        needed = {f"share_to_beat_parent/{name}": share_to_reach(curve, parent_own)
                  for name, curve in curves.groupby("order", sort=False)}
        needed |= {f"share_for_95pct_gain/{name}": share_for_gain(curve, scored)
                   for name, curve in curves.groupby("order", sort=False)}
        verdicts.append(replace(decided, numbers={**decided.numbers, **needed}, backfill_order=chosen.order.order,
                                order_chosen=chosen.order.reason))
        backfills.append(curves)
    backfill = pd.concat(backfills, ignore_index=True)
    index_table = pd.concat(index_tables, ignore_index=True) if index_tables else pd.DataFrame()
    routes = {child.name: _candidates(child, entries) for child in models[1:]}
    files = write_report_files(table, summary, backfill, verdicts, order, report_dir, index_table, indexes.min_recall,
                               routes, score.interval_level)
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
