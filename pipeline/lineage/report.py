"""The lineage report's measurements: every model pair of v1 -> v2 -> ... scored, AC/AM, update
gains, backfill curves (``pipeline.lineage.backfill``), a verdict per new model, each new model's
route and backfill order chosen first on the training split's selection rows
(``pipeline.lineage.selection``). ``pipeline.flows.lineage`` encodes, orders these steps and
writes the files (``pipeline.lineage.files``) and the MLflow run (``pipeline.lineage.runs``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.compat.methods import Route, method_named, t12_entry, t21_entry
from pipeline.config import MixedIndexConfig, ScoreConfig
from pipeline.data.embeddings import EmbeddingSet
from pipeline.lineage.backfill import (
    backfill_orders,
    child_backfill,
    child_indexes,
    child_sets,
    order_predictor,
    share_for_gain,
    share_to_reach,
)
from pipeline.lineage.measures import LineageMeasures
from pipeline.lineage.metrics import LineageModel, Verdict, lower_triangle_summary, verdict
from pipeline.lineage.orders import BenefitPredictor
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
from pipeline.score import (
    CRITERION_METRICS,
    Gallery,
    MatrixEntry,
    MatrixRoles,
    matrix,
    pair_row,
    score_all_pairs,
    update_gain,
)
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


def lineage_pairs(models: list[LineageModel], entries: dict[str, MatrixEntry]) -> list[tuple[str, str]]:
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


def chosen_without_selection(models: list[LineageModel], entries: dict, metrics: list[str], why: str
                              ) -> dict[str, Choices]:
    """Each child's method's own route and the random order, when there are no selection rows."""
    choices = {}
    for child in models[1:]:
        route = method_named(read_model_card(child.folder).method).judged_route
        choices[child.name] = Choices(default_route(_candidates(child, entries), route, why),
                                      OrderChoice("random", metrics[-1], {}, f"random ({why})"), None)
    return choices


def selection_rows(models: list[LineageModel], training: dict[str, Gallery], score: ScoreConfig, fraction: float
                   ) -> tuple[dict[str, EmbeddingSet], np.ndarray, dict[str, EmbeddingSet]]:
    """Each model's training-split set in memory, the mask of its selection rows (the same rows
    for every model) and each set cut to them."""
    loaded = {m.name: training[m.name].load() for m in models}
    mask = selection_mask(loaded[models[0].name].ids, fraction)
    rows = int(mask.sum())
    if rows <= max(score.topk):
        raise ValueError(f"lineage: {rows} selection rows of the training split at fraction {fraction} (need more "
                         f"than k = {max(score.topk)}); raise lineage.selection_fraction")
    return loaded, mask, {name: subset(found, mask, "selection rows") for name, found in loaded.items()}


def choose_on_selection(models: list[LineageModel], loaded: dict[str, EmbeddingSet], mask: np.ndarray,
                        chosen: dict[str, EmbeddingSet], entries: dict[str, MatrixEntry], score: ScoreConfig,
                        steps: int, seed: int) -> dict[str, Choices]:
    """Each child's route and backfill order, chosen on the selection rows of the training split
    (``selection_rows``: ``chosen``, their matrix ``entries``): its routes scored there against the
    parent's own pair, the backfill curves of random (several draws), stratified and predicted
    orders there (the predictor fitted on the other rows)."""
    rows = int(mask.sum())
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


def scored_metrics(score: ScoreConfig) -> list[str]:
    """The criterion metrics a report judges (mAP needs the full ranking)."""
    return [m for m in CRITERION_METRICS if m != "map" or score.full_ranking]


def check_dimensions(models: list[LineageModel], sets: dict[str, Gallery]) -> None:
    for child in models[1:]:
        if sets[child.name].dim != sets[child.parent].dim:
            raise ValueError(f"{child.name} ({sets[child.name].dim}-d) and its parent {child.parent} "
                             f"({sets[child.parent].dim}-d) differ in dimension: a lineage report compares every "
                             "model with its parent directly")


def measure_lineage(models: list[LineageModel], entries: dict[str, MatrixEntry], sets: dict[str, Gallery],
                    choices: dict[str, Choices], score: ScoreConfig, backfill_steps: int, indexes: MixedIndexConfig,
                    seed: int) -> LineageMeasures:
    """Every pair of the scored split, AC/AM, and per new model its verdict on the chosen route,
    update gains, backfill curves and (``indexes.steps``) the mixed gallery's index table."""
    order, scored = [m.name for m in models], scored_metrics(score)
    table = score_all_pairs(entries, MatrixRoles(old_classes=read_model_card(models[0].folder).classes), score,
                            pairs=lineage_pairs(models, entries))
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
        verdicts.append(replace(decided, numbers={**decided.numbers, **_shares_needed(curves, cell, child, scored)},
                                backfill_order=chosen.order.order, order_chosen=chosen.order.reason))
        backfills.append(curves)
    return LineageMeasures(order, table, summary, verdicts, gains, pd.concat(backfills, ignore_index=True),
                           pd.concat(index_tables, ignore_index=True) if index_tables else pd.DataFrame(),
                           {child.name: _candidates(child, entries) for child in models[1:]})


def _shares_needed(curves: pd.DataFrame, cell: Callable[[str, str], dict], child: LineageModel,
                   scored: list[str]) -> dict[str, float]:
    """Per backfill order, the share re-encoded to beat the parent's own pair and the share for 95 % of the gain."""
    parent_own = {m: cell(child.parent, child.parent)[m] for m in scored}
    needed = {f"share_to_beat_parent/{name}": share_to_reach(curve, parent_own)
              for name, curve in curves.groupby("order", sort=False)}
    return needed | {f"share_for_95pct_gain/{name}": share_for_gain(curve, scored)
                     for name, curve in curves.groupby("order", sort=False)}
