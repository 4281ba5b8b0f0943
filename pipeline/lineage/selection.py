"""What a lineage report decides before it reads the split it scores: for each new model, the
route its verdict is judged on and the order its parent's gallery is re-encoded in, each chosen
on the selection rows of the training split (``selection_mask``), never on the scored split. The
scored split's intervals then judge one choice, instead of the best of several (which would favour
whichever route or order the test queries happen to flatter).

- route: among the model's routes (direct, its T21 queries, its parent's gallery mapped by its
  T12), a route that needs no backfill and ships on the selection rows, the one with the largest
  smallest lower bound of its intervals; else T12 where it ships there; else the route with the
  largest smallest lower bound (which will not ship on the scored split either, most likely);
- order: an order a backfill can follow (stratified, predicted) whose area under the backfill
  curve beats random's on a criterion metric by its paired interval over the selection queries and
  is below it on none, the largest area among those; else random. Random's area is the mean of
  ``RANDOM_DRAWS`` random orders', so that one lucky draw does not decide.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from pipeline.compat.methods import Route
from pipeline.config import SELECTION_FRACTION
from pipeline.data.dataset import in_validation
from pipeline.data.embeddings import EmbeddingSet
from pipeline.score import (
    MET,
    NOT_MET,
    Decision,
    Interval,
    format_difference,
    judged_metrics,
    pair_decision,
    paired_interval,
)

RANDOM_DRAWS = 3
NO_BACKFILL_ROUTES = (Route.DIRECT, Route.T21)


def selection_mask(ids: np.ndarray, fraction: float = SELECTION_FRACTION) -> np.ndarray:
    """The selection rows among training-split ``ids``: the validation rows at ``fraction``
    (decided by the id alone, the rows a model trained with ``validation_fraction`` of the same
    value never saw)."""
    return np.array([in_validation(str(row_id), fraction) for row_id in ids], dtype=bool)


def subset(embeddings: EmbeddingSet, mask: np.ndarray, what: str) -> EmbeddingSet:
    """The rows of ``embeddings`` that ``mask`` marks, in memory (its path names ``what``)."""
    return replace(embeddings, path=f"{embeddings.path} ({what})", ids=embeddings.ids[mask],
                   labels=embeddings.labels[mask], vectors=embeddings.vectors[mask])


@dataclass(frozen=True)
class Candidate:
    """One route of a new model against its parent's gallery: the report's (query, gallery) pair."""

    route: Route
    query: str
    gallery: str

    @property
    def pair(self) -> str:
        return f"{self.query} -> {self.gallery}"


@dataclass(frozen=True)
class RouteChoice:
    candidate: Candidate
    reason: str


def _lowest_bound(row: dict | None) -> float:
    """The smallest lower bound of a row's criterion intervals (-inf where it has none)."""
    if row is None:
        return -np.inf
    bounds = [row.get(f"delta_{m}_low") for m in judged_metrics(row)]
    return min((float(b) for b in bounds if b is not None and not pd.isna(b)), default=-np.inf)


def choose_route(candidates: list[Candidate], selection: dict[str, dict | None], rows: int) -> RouteChoice:
    """The route to judge (see the module's docstring) from each candidate's row scored on the
    ``rows`` selection rows (``selection[candidate.pair]``, None where not scored)."""
    decided = {c.pair: pair_decision(selection[c.pair]) if selection.get(c.pair) else None for c in candidates}
    bound = {c.pair: _lowest_bound(selection.get(c.pair)) for c in candidates}
    shipping = [c for c in candidates if decided[c.pair] is Decision.SHIP]
    groups = ([c for c in shipping if c.route in NO_BACKFILL_ROUTES], shipping, candidates)
    chosen = max(next(group for group in groups if group), key=lambda c: bound[c.pair])
    seen = "; ".join(f"{c.pair} {decided[c.pair] or 'not judged'}" for c in candidates)
    return RouteChoice(chosen, f"chosen on {rows} selection rows of the training split ({seen})")


def default_route(candidates: list[Candidate], route: Route, why: str) -> RouteChoice:
    """``route`` where it is a candidate, else the first candidate, when nothing can be chosen on."""
    chosen = next((c for c in candidates if c.route is route), candidates[0])
    return RouteChoice(chosen, f"the method's own route ({why})")


@dataclass(frozen=True)
class OrderChoice:
    order: str
    metric: str                                      # the area that ranked the eligible orders
    against_random: dict[str, dict[str, Interval]]   # order -> metric -> its area minus random's
    reason: str


def choose_order(areas: dict[str, dict[str, np.ndarray]], random_orders: list[str], metrics: list[str],
                 resamples: int = 1000, level: float = 0.95) -> OrderChoice:
    """The order to recommend (see the module's docstring) from per-query backfill curve areas on
    the selection rows (``areas[order][metric]``, one value per query in one query order)."""
    primary = "map" if "map" in metrics else metrics[0]
    random = {m: np.mean([areas[name][m] for name in random_orders], axis=0) for m in metrics}
    against = {order: {m: paired_interval(values[m], random[m], resamples, level) for m in metrics}
               for order, values in areas.items() if order not in random_orders}
    eligible = [order for order, intervals in against.items()
                if any(i.verdict == MET for i in intervals.values()) and all(i.verdict != NOT_MET
                                                                              for i in intervals.values())]
    shown = "; ".join(f"{order} " + ", ".join(f"{m} {format_difference(i.delta, i.low, i.high)} {i.verdict}"
                                              for m, i in intervals.items()) for order, intervals in against.items())
    if not eligible:
        return OrderChoice("random", primary, against,
                           f"no order beats random ({len(random_orders)} draws) on the selection rows: {shown}")
    best = max(eligible, key=lambda order: float(np.nanmean(areas[order][primary])))
    return OrderChoice(best, primary, against, f"the largest {primary} area among the orders that beat random's "
                                               f"({len(random_orders)} draws) on the selection rows: {shown}")
