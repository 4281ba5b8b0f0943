"""Metrics over a lineage of models v1 -> v2 -> ... (design notes, section 3), free of I/O.

- the N x N matrix ``C[q][g]`` per metric (rows: query model, columns: gallery model, in
  lineage order); AC = share of the cells below the diagonal (a newer model's queries against
  an older gallery) with ``C[i][j] > C[j][j]`` (strict: a tie fails), and AM = mean of the lower
  triangle with its diagonal, as CoReS (Biondi et al.) defines both;
- update gain of each model against its parent, ``(C[i][p] - C[p][p]) / (C[i][i] - C[p][p])``:
  the share of the new model's own improvement that the parent's gallery gets without a backfill
  (a lineage has no independently trained model, so the new model itself is the upper reference;
  ``pipeline.score.criteria.update_gain``, NaN when the new model does not beat its parent);
- backfill curve: the metric of the new model's queries against a gallery of which a growing
  share has been re-encoded with the new model, the rest still holding the parent's vectors.
  It starts at ``C[i][p]`` and ends at ``C[i][i]``; its area (trapezoid rule over the share) says
  what a partial backfill buys. Two orders: random, and stratified (``stratified_order``: rounds
  over the class each item's parent vector is nearest to, with the parent-space centers of the
  new model's statistics, so no gallery label is used);
- a verdict per new model: ship with no backfill, ship with the forward transformation applied
  to the stored gallery vectors, or backfill needed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline.score.criteria import beats
from pipeline.score.retrieval import normalize

VERDICT_METRICS = ("top1", "map")
NO_BACKFILL, FORWARD, BACKFILL = "ship, no backfill", "ship, forward transformation on the gallery", "backfill needed"


def lower_triangle_summary(matrix: np.ndarray) -> tuple[float, float]:
    """(AC, AM) of an N x N matrix: AC over the cells below the diagonal, AM over the lower
    triangle with its diagonal (as CoReS defines both). Cells not scored (NaN: dimensions that
    differ) are left out of both. NaN when no cell counts."""
    below = [(i, j) for i, j in zip(*np.tril_indices(len(matrix), k=-1))
             if not np.isnan(matrix[i, j]) and not np.isnan(matrix[j, j])]
    cells = matrix[np.tril_indices(len(matrix))]
    cells = cells[~np.isnan(cells)]
    ac = float(np.mean([beats(matrix[i, j], matrix[j, j]) for i, j in below])) if below else float("nan")
    return ac, float(cells.mean()) if len(cells) and below else float("nan")


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


Scorer = Callable[[np.ndarray], dict[str, float]]  # a gallery's vectors -> metrics of the fixed queries


def backfill_curve(parent_gallery: np.ndarray, new_gallery: np.ndarray, order: np.ndarray, score: Scorer,
                   steps: int = 10) -> pd.DataFrame:
    """Metrics at shares 0, 1/steps, ..., 1 of the gallery re-encoded in ``order``; the two
    galleries hold the same images in the same row order."""
    if parent_gallery.shape != new_gallery.shape:
        raise ValueError(f"parent and new gallery differ in shape: {parent_gallery.shape} vs {new_gallery.shape}")
    parent, new = normalize(parent_gallery), normalize(new_gallery)
    rows = []
    for step in range(steps + 1):
        share = step / steps
        mixed = parent.copy()
        chosen = order[: int(round(share * len(order)))]
        mixed[chosen] = new[chosen]
        rows.append({"share": share, **score(mixed)})
    return pd.DataFrame(rows)


def curve_area(curve: pd.DataFrame, metric: str) -> float:
    """Area under ``metric`` over the re-encoded share in [0, 1] (trapezoid rule)."""
    return float(np.trapezoid(curve[metric].to_numpy(), curve["share"].to_numpy()))


def share_to_reach(curve: pd.DataFrame, target: dict[str, float]) -> float:
    """The smallest re-encoded share at which every metric of ``target`` is strictly beaten; NaN if none."""
    passing = np.logical_and.reduce([[beats(value, v) for value in curve[m]] for m, v in target.items()])
    return float(curve["share"].to_numpy()[passing][0]) if passing.any() else float("nan")


@dataclass(frozen=True)
class Verdict:
    model: str
    parent: str
    decision: str
    route: str                     # the pair whose numbers decide: "<query> -> <gallery>"
    numbers: dict[str, float]      # that pair's metrics and the parent's own, per metric


def verdict(model: str, parent: str, cell: Callable[[str, str], dict[str, float] | None],
            t21: str | None = None, t12_gallery: str | None = None) -> Verdict:
    """Decide for ``model`` against its ``parent``'s gallery from the scored cells
    (``cell(query, gallery)``, None when not scored): the direct route or the model's T21 queries
    beat the parent on every verdict metric scored (top-1, and mAP when the full ranking was
    scored) -> no backfill; else the model's queries against the parent gallery mapped by its
    T12 do -> forward transformation; else backfill."""
    reference = cell(parent, parent)
    if reference is None:
        raise ValueError(f"the parent {parent!r} was not scored against itself")
    routes = [(model, parent, NO_BACKFILL)]
    if t21:
        routes.append((t21, parent, NO_BACKFILL))
    if t12_gallery:
        routes.append((model, t12_gallery, FORWARD))
    judged = [m for m in VERDICT_METRICS if m in reference]  # mAP only when the full ranking was scored
    for query, gallery, decision in routes:
        metrics = cell(query, gallery)
        if metrics is not None and all(beats(metrics[m], reference[m]) for m in judged):
            return Verdict(model, parent, decision, f"{query} -> {gallery}", _numbers(metrics, reference, judged))
    direct = cell(model, parent) or {m: float("nan") for m in judged}
    return Verdict(model, parent, BACKFILL, f"{model} -> {parent}", _numbers(direct, reference, judged))


def _numbers(metrics: dict[str, float], reference: dict[str, float], judged: list[str]) -> dict[str, float]:
    return {**{m: metrics[m] for m in judged}, **{f"parent_{m}": reference[m] for m in judged}}
