"""What a lineage report measured, in one object: what its files (``pipeline.lineage.files``) and
its MLflow run (``pipeline.lineage.runs``) are written from."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from pipeline.lineage.metrics import Verdict
from pipeline.lineage.selection import Candidate


@dataclass(frozen=True)
class LineageMeasures:
    order: list[str]                    # the lineage's models, v1 first
    table: pd.DataFrame                 # one row per scored pair (pipeline.score.matrix)
    summary: pd.DataFrame               # AC and AM per metric
    verdicts: list[Verdict]             # one per new model
    gains: dict[str, float]             # update gains, keyed as MLflow metrics
    backfill: pd.DataFrame              # backfill curves: model, order, share, metrics
    indexes: pd.DataFrame               # approximate indexes on the gallery mixed in the recommended order
    routes: dict[str, list[Candidate]]  # each new model's routes against its parent's gallery
