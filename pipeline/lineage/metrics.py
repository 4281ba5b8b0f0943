"""Metrics over a lineage of models v1 -> v2 -> ... (design notes, section 3), free of I/O.

- the N x N matrix ``C[q][g]`` per metric (rows: query model, columns: gallery model, in
  lineage order); AC = share of the cells below the diagonal (a newer model's queries against
  an older gallery) with ``C[i][j] > C[j][j]`` (strict: a tie fails), and AM = mean of the lower
  triangle with its diagonal, as CoReS (Biondi et al.) defines both;
- update gain of each model against its parent, ``(C[i][p] - C[p][p]) / (C[i][i] - C[p][p])``:
  the share of the new model's own improvement that the parent's gallery gets without a backfill
  (a lineage has no independently trained model, so the new model itself is the upper reference;
  ``pipeline.score.criteria.update_gain``, NaN when the new model does not beat its parent);
- the backfill curve and its orders are ``pipeline.lineage.backfill``'s;
- a verdict per new model: ship with no backfill, ship with the forward transformation applied
  to the stored gallery vectors, or backfill needed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.score.criteria import CRITERION_METRICS, beats, flips_allowed
from pipeline.score.uncertainty import WITHIN_NOISE

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


@dataclass(frozen=True)
class Verdict:
    model: str
    parent: str
    decision: str
    route: str                     # the pair whose numbers decide: "<query> -> <gallery>"
    numbers: dict[str, float]      # that pair's metrics and the parent's own, per metric
    within_noise: tuple[str, ...] = ()  # metrics whose paired interval on that route holds 0

    @property
    def statement(self) -> str:
        """The decision, and the metrics on which it rests within the queries' noise."""
        return self.decision + (f" (within noise on {', '.join(self.within_noise)})" if self.within_noise else "")


def verdict(model: str, parent: str, cell: Callable[[str, str], dict[str, float] | None],
            t21: str | None = None, t12_gallery: str | None = None) -> Verdict:
    """Decide for ``model`` against its ``parent``'s gallery from the scored cells
    (``cell(query, gallery)``, None when not scored): the direct route or the model's T21 queries
    beat the parent on every verdict metric scored (top-1, and mAP when the full ranking was
    scored), with negative flips within ``score.max_flip_rate`` where one is set -> no backfill;
    else the model's queries against the parent gallery mapped by its T12 do -> forward
    transformation; else backfill."""
    reference = cell(parent, parent)
    if reference is None:
        raise ValueError(f"the parent {parent!r} was not scored against itself")
    routes = [(model, parent, NO_BACKFILL)]
    if t21:
        routes.append((t21, parent, NO_BACKFILL))
    if t12_gallery:
        routes.append((model, t12_gallery, FORWARD))
    judged = [m for m in CRITERION_METRICS if m in reference]  # mAP only when the full ranking was scored
    for query, gallery, decision in routes:
        metrics = cell(query, gallery)
        if (metrics is not None and all(beats(metrics[m], reference[m]) for m in judged)
                and flips_allowed(metrics)):
            return _decided(model, parent, decision, f"{query} -> {gallery}", metrics, reference, judged)
    direct = cell(model, parent) or {m: float("nan") for m in judged}
    return _decided(model, parent, BACKFILL, f"{model} -> {parent}", direct, reference, judged)


def _decided(model: str, parent: str, decision: str, route: str, metrics: dict, reference: dict[str, float],
             judged: list[str]) -> Verdict:
    """The verdict with the deciding pair's numbers, their paired intervals where the report has
    them (``pipeline.score.uncertainty``), and the metrics whose interval holds 0."""
    bounds = {f"delta_{m}{end}": metrics[f"delta_{m}{end}"] for m in judged for end in ("_low", "_high")
              if f"delta_{m}{end}" in metrics}
    noisy = tuple(m for m in judged if metrics.get(f"verdict_{m}") == WITHIN_NOISE)
    rate = metrics.get("negative_flip_rate", np.nan)
    flips = {} if np.isnan(rate) else {"negative_flip_rate": rate}
    numbers = {**{m: metrics[m] for m in judged}, **{f"parent_{m}": reference[m] for m in judged}, **bounds, **flips}
    return Verdict(model, parent, decision, route, numbers, noisy)


@dataclass(frozen=True)
class LineageModel:
    name: str            # the entry's name in the report, e.g. "v2"
    folder: Path         # its artifact folder
    parent: str | None   # the parent's entry name
