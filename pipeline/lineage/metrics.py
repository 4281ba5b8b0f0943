"""Metrics over a lineage of models v1 -> v2 -> ... (docs/design.md, 'The metrics'), free of I/O.

- the N x N matrix ``C[q][g]`` per metric (rows: query model, columns: gallery model, in
  lineage order); AC = share of the cells below the diagonal (a newer model's queries against
  an older gallery) with ``C[i][j] > C[j][j]`` (strict: a tie fails), and AM = mean of the lower
  triangle with its diagonal, as CoReS (Biondi et al.) defines both;
- update gain of each model against its parent, ``(C[i][p] - C[p][p]) / (C[i][i] - C[p][p])``:
  the share of the new model's own improvement that the parent's gallery gets without a backfill
  (a lineage has no independently trained model, so the new model itself is the upper reference;
  ``pipeline.score.criteria.update_gain``, NaN when the new model does not beat its parent);
- the backfill curve and its orders are ``pipeline.lineage.backfill``'s;
- a verdict per new model, on the one route chosen before the test split is read
  (``pipeline.lineage.selection``), in the words of ``pipeline.score.criteria.Decision``: ship (with
  no backfill, or with the forward transformation applied to the stored gallery vectors) when its
  intervals meet the criterion, inconclusive when one holds 0 (more queries, or a backfill, settle
  it), backfill otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.score import WITHIN_NOISE, Decision, beats, judged_metrics, pair_decision

NO_BACKFILL, FORWARD = "no backfill", "the forward transformation applied to the stored gallery"


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
    decision: Decision
    route: str                     # the pair whose numbers decide: "<query> -> <gallery>"
    numbers: dict[str, float]      # that pair's metrics and the parent's own, per metric
    within_noise: tuple[str, ...] = ()  # metrics whose paired interval on that route holds 0
    forward: bool = False          # the route searches the parent's gallery mapped by the model's T12
    chosen: str = ""               # how the route was chosen (``pipeline.lineage.selection``)
    backfill_order: str = ""       # the order to re-encode the parent's gallery in, where it is backfilled
    order_chosen: str = ""         # how that order was chosen

    @property
    def statement(self) -> str:
        """The decision in words: ``ship, no backfill``, ``ship, the forward transformation ...``,
        ``inconclusive (within noise on top1): ...``, ``backfill``."""
        if self.decision is Decision.SHIP:
            return f"{Decision.SHIP}, {FORWARD if self.forward else NO_BACKFILL}"
        if self.decision is Decision.INCONCLUSIVE:
            return (f"{Decision.INCONCLUSIVE} (within noise on {', '.join(self.within_noise)}): score more queries "
                    "to settle it, or backfill")
        return str(self.decision)


def verdict(model: str, parent: str, cell: Callable[[str, str], dict | None], query: str, gallery: str,
            forward: bool = False, chosen: str = "") -> Verdict:
    """The decision for ``model`` against its ``parent``'s gallery on the chosen route (``query``
    -> ``gallery``, a row of the report: ``cell(query, gallery)``, None when not scored), from its
    paired intervals and negative flips (``pipeline.score.criteria.pair_decision``); backfill when
    the route was not judged."""
    reference = cell(parent, parent)
    if reference is None:
        raise ValueError(f"the parent {parent!r} was not scored against itself")
    judged = judged_metrics(reference)  # mAP only when the full ranking was scored
    metrics = cell(query, gallery) or {m: float("nan") for m in judged}
    decision = pair_decision(metrics) or Decision.BACKFILL
    bounds = {f"delta_{m}{end}": metrics[f"delta_{m}{end}"] for m in judged for end in ("_low", "_high")
              if f"delta_{m}{end}" in metrics}
    noisy = tuple(m for m in judged if metrics.get(f"verdict_{m}") == WITHIN_NOISE)
    rate = metrics.get("negative_flip_rate", np.nan)
    flips = {} if pd.isna(rate) else {"negative_flip_rate": float(rate)}
    numbers = {**{m: metrics[m] for m in judged}, **{f"parent_{m}": reference[m] for m in judged}, **bounds, **flips}
    return Verdict(model, parent, decision, f"{query} -> {gallery}", numbers, noisy, forward, chosen)


@dataclass(frozen=True)
class LineageModel:
    name: str            # the entry's name in the report, e.g. "v2"
    folder: Path         # its artifact folder
    parent: str | None   # the parent's entry name
