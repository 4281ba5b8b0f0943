"""Backfill of a lineage's galleries (docs/design.md, 'The metrics'): the metric of the new model's
queries against a gallery of which a growing share has been re-encoded with the new model, the
rest still holding the parent's vectors. It starts at ``C[i][p]`` and ends at ``C[i][i]``; its area
(trapezoid rule over the share) says what a partial backfill buys. The orders: random;
stratified (``stratified_order``: rounds over the class each item's parent vector is nearest to,
with the parent-space centers of the new model's statistics, so no gallery label is used);
predicted from the parent vectors alone by a regression fitted on the training split, and the
oracle's, which reads the new vectors and labels (``pipeline.lineage.orders``)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.compat.statistics import OldSpaceStats
from pipeline.config import MixedIndexConfig
from pipeline.data.embeddings import EmbeddingSet
from pipeline.lineage.metrics import LineageModel
from pipeline.lineage.orders import (
    BenefitPredictor,
    class_centers,
    fit_benefit_predictor,
    oracle_order,
    predicted_order,
)
from pipeline.lineage.registry import STATS_FILE
from pipeline.model.card import read_model_card
from pipeline.runtime import progress
from pipeline.score import (
    CRITERION_METRICS,
    PER_QUERY_KEYS,
    Gallery,
    beats,
    mixed_gallery,
    mixed_index_table,
    normalize,
    per_query_metrics,
)

log = logging.getLogger(__name__)


def predicted_order_table(gallery: EmbeddingSet, parent: EmbeddingSet, new: EmbeddingSet) -> pd.DataFrame:
    """The backfill order of ``gallery``'s items predicted from its model's vectors alone
    (``pipeline.lineage.orders``), fitted on the training split's ``parent`` and ``new`` sets:
    columns id, rank, predicted_benefit."""
    if parent.model_id != gallery.model_id:
        raise ValueError(f"{parent.path} was written by {parent.model_name}, the gallery {gallery.path} by "
                         f"{gallery.model_name}: the predictor reads the gallery's model's vectors")
    predictor = fit_benefit_predictor(parent.vectors, new.vectors_of(parent.ids), parent.labels, len(parent.classes))
    order = predicted_order(predictor, gallery.vectors)
    return pd.DataFrame({"id": gallery.ids[order].astype(str), "rank": np.arange(1, len(order) + 1),
                         "predicted_benefit": predictor.predict(gallery.vectors)[order]})


def random_order(size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).permutation(size)


def stratified_order(parent_vectors: np.ndarray, parent_centers: np.ndarray, seed: int = 0) -> np.ndarray:
    """Gallery positions in rounds over the classes each item's parent vector is nearest to
    (parent-space centers), random within a class: every class gets re-encoded items early and
    at the same pace, which a random order only does on average."""
    nearest = (normalize(parent_vectors) @ normalize(parent_centers).T).argmax(axis=1)
    draw = np.random.default_rng(seed).random(len(nearest))
    pace = np.empty(len(nearest))
    for label in np.unique(nearest):
        members = np.flatnonzero(nearest == label)
        pace[members[np.argsort(draw[members])]] = (np.arange(len(members)) + 0.5) / len(members)
    return np.argsort(pace, kind="stable")


PerQuery = Callable[[np.ndarray], dict[str, np.ndarray]]  # a mixed gallery -> each criterion metric per fixed query


def backfill_curve(parent_gallery: np.ndarray, new_gallery: np.ndarray, order: np.ndarray, score: PerQuery,
                   steps: int = 10) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Metrics at shares 0, 1/steps, ..., 1 of the gallery re-encoded in ``order`` (the means over
    the queries), and each query's area under its curve per metric (whose mean is the curve's
    area); the two galleries hold the same images in the same row order."""
    if parent_gallery.shape != new_gallery.shape:
        raise ValueError(f"parent and new gallery differ in shape: {parent_gallery.shape} vs {new_gallery.shape}")
    parent, new = normalize(parent_gallery), normalize(new_gallery)
    shares = np.arange(steps + 1) / steps
    per_share = [score(mixed_gallery(parent, new, order, share))
                 for share in progress(shares, "report: backfill shares")]
    curve = pd.DataFrame([{"share": share, **{m: float(np.nanmean(values[m])) for m in values}}
                          for share, values in zip(shares, per_share)])
    areas = {m: np.trapezoid(np.stack([values[m] for values in per_share]), shares, axis=0) for m in per_share[0]}
    return curve, areas


def curve_area(curve: pd.DataFrame, metric: str) -> float:
    """Area under ``metric`` over the re-encoded share in [0, 1] (trapezoid rule)."""
    return float(np.trapezoid(curve[metric].to_numpy(), curve["share"].to_numpy()))


def share_to_reach(curve: pd.DataFrame, target: dict[str, float]) -> float:
    """The smallest re-encoded share at which every metric of ``target`` is strictly beaten; NaN if none."""
    passing = np.logical_and.reduce([[beats(value, v) for value in curve[m]] for m, v in target.items()])
    return float(curve["share"].to_numpy()[passing][0]) if passing.any() else float("nan")


def share_for_gain(curve: pd.DataFrame, metrics: list[str], fraction: float = 0.95) -> float:
    """The smallest re-encoded share at which every metric has come ``fraction`` of the way from
    the curve's start (new/old) to its end (new/new); NaN when a metric gains nothing from start
    to end (no gain to reach) or a value is missing."""
    start, end = curve[metrics].iloc[0].to_numpy(), curve[metrics].iloc[-1].to_numpy()
    if not metrics or not np.all(end > start):
        return float("nan")
    reached = np.all(curve[metrics].to_numpy() >= start + fraction * (end - start), axis=1)
    return float(curve["share"].to_numpy()[reached][0]) if reached.any() else float("nan")


def gap_closed(predicted: float, random: float, oracle: float) -> float:
    """The share of the gap from the random order's area to the oracle's that the predicted order
    closes, ``(predicted - random) / (oracle - random)``; NaN (undefined) unless the oracle's area
    is above random's: with no gap there is nothing to close, and a gap of the other sign would
    turn a loss into a gain."""
    if not oracle > random:
        return float("nan")
    return (predicted - random) / (oracle - random)


def child_sets(child: LineageModel, sets: dict[str, Gallery]) -> tuple[EmbeddingSet, EmbeddingSet]:
    """The child's set and its parent's in memory, checked to hold the same images in one order."""
    query, parent = sets[child.name].load(), sets[child.parent].load()
    if not np.array_equal(query.ids, parent.ids):
        raise ValueError(f"{query.model_name} and {parent.model_name} embeddings hold different images or orders "
                         f"({query.path}, {parent.path})")
    return query, parent


def order_predictor(child_train: EmbeddingSet, parent_train: EmbeddingSet, leave_out: np.ndarray) -> BenefitPredictor:
    """The predicted order's regression, fitted on the training split's rows not in ``leave_out``
    (the selection rows its order is judged on), both models' vectors of the same images."""
    keep = ~leave_out
    return fit_benefit_predictor(parent_train.vectors[keep], child_train.vectors[keep], parent_train.labels[keep],
                                 len(parent_train.classes))


def backfill_orders(child: LineageModel, query: EmbeddingSet, parent: EmbeddingSet, seed: int,
                    predictor: BenefitPredictor | None = None, random_draws: int = 1,
                    oracle: bool = True) -> dict[str, np.ndarray]:
    """The orders to re-encode the child's parent gallery in (``child_sets``' ``query`` and
    ``parent``): random (``random``, or ``random-<i>`` for several draws), stratified (with the
    child's statistics), predicted (with ``predictor``, ``order_predictor``) and, with ``oracle``,
    the oracle's (it reads the new vectors and the labels, which a backfill cannot)."""
    draws = {"random": random_order(len(parent.ids), seed)} if random_draws == 1 else {
        f"random-{i}": random_order(len(parent.ids), seed + i) for i in range(random_draws)}
    orders = dict(draws)
    centers = _parent_centers(child, parent.dim)
    if centers is not None:
        orders["stratified"] = stratified_order(parent.vectors, centers, seed)
    if predictor is not None:
        orders["predicted"] = predicted_order(predictor, parent.vectors)
    if oracle:
        orders["oracle"] = oracle_order(parent.vectors, query.vectors, parent.labels,
                                        class_centers(query.vectors, query.labels, len(parent.classes)))
    return orders


def child_backfill(child: LineageModel, query: EmbeddingSet, parent: EmbeddingSet, orders: dict[str, np.ndarray],
                   steps: int, full_ranking: bool) -> tuple[pd.DataFrame, dict[str, dict[str, np.ndarray]]]:
    """The child's queries against its parent's gallery re-encoded in each of ``orders``: the
    curves, and per order each query's area under its curve per criterion metric."""
    def score(mixed: np.ndarray) -> dict[str, np.ndarray]:
        per_query = per_query_metrics(query.vectors, query.labels, mixed, query.labels, query.ids, query.ids,
                                      topk=(1,), full_ranking=full_ranking)
        return {m: per_query[PER_QUERY_KEYS[m]] for m in CRITERION_METRICS if PER_QUERY_KEYS[m] in per_query}

    curves, areas = [], {}
    for name, order in orders.items():
        curve, areas[name] = backfill_curve(parent.vectors, query.vectors, order, score, steps)
        curves.append(curve.assign(model=child.name, order=name))
    return pd.concat(curves, ignore_index=True), areas


def child_indexes(child: LineageModel, query: EmbeddingSet, parent: EmbeddingSet, order: np.ndarray,
                  config: MixedIndexConfig) -> pd.DataFrame:
    """The child's queries against its parent's gallery re-encoded in ``order``, on each approximate
    index of ``config`` at each share (``pipeline.score.indexes``); a query's own image left out."""
    return mixed_index_table(parent.vectors, query.vectors, order, parent.labels, query.vectors, query.labels,
                             np.arange(len(query)), config).assign(model=child.name)


def _parent_centers(child: LineageModel, parent_dim: int) -> np.ndarray | None:
    """The parent-space class centers of the child's statistics: the copy registered with the
    artifact (``pipeline.lineage.registry.STATS_FILE``), else the card's path; None (logged) if neither."""
    card = read_model_card(child.folder)
    for path in (child.folder / STATS_FILE, Path(card.stats_file or "")):
        if path.is_file():
            centers = OldSpaceStats.load(path).centers
            if centers.shape[1] != parent_dim:
                raise ValueError(f"{path}: statistics of dimension {centers.shape[1]}, the parent's embeddings have "
                                 f"{parent_dim}")
            return centers
    log.warning("lineage: no statistics for %s (card: %s); the backfill curve has the random order only",
                child.name, card.stats_file)
    return None
