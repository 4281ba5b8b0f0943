"""The compatibility criterion, the decision it supports, the update gain and the cell lookup
(docs/design.md, 'The metrics'), written once for the report, the scenario tables, the lineage, the index
guard and a sweep's confirmation.

- criterion of one metric: ``M(q, g) > M(r, r)`` judged by the paired bootstrap interval of the
  difference over the same queries (``pipeline.score.uncertainty``): **met** when the interval lies
  above 0, **not met** when it lies at or below 0, **within noise** otherwise;
- over several metrics (top-1 and mAP): not met when one is not met, met when all are met, within
  noise otherwise (``combined_verdict``);
- a pair's decision, in the three words every output uses (``Decision``): ship (met, and its
  negative flips within ``score.max_flip_rate`` where one is set), inconclusive (within noise:
  more queries, or a backfill, settle it), backfill (not met, or flips over the limit);
- update gain: ``(M(new, old) - M(old, old)) / (M(ref, ref) - M(old, old))`` with ``ref`` the
  reference new model (the independently trained one; in a lineage the new model itself). It is
  undefined (NaN; "-" in Markdown) unless the reference's estimate is above the old model's: with
  no upgrade there is nothing to gain, and a span of the other sign would flip the gain's sign;
- a cell: one metric of one (query model, gallery model) row of a report table.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from enum import StrEnum

import pandas as pd

from pipeline.score.uncertainty import MET, NOT_MET, WITHIN_NOISE

CRITERION_METRICS = ("top1", "map")  # what the criterion judges, and the gain, curves and heat maps show


class Decision(StrEnum):
    """What a judged pair says of serving the query model's vectors against the gallery's."""

    SHIP = "ship"                  # met on every criterion metric, flips within the limit
    INCONCLUSIVE = "inconclusive"  # within noise on a metric and not met on none: more queries, or backfill
    BACKFILL = "backfill"          # not met on a metric, or negative flips over the limit


DECISION_OF_VERDICT = {MET: Decision.SHIP, WITHIN_NOISE: Decision.INCONCLUSIVE, NOT_MET: Decision.BACKFILL}


def beats(value: float, reference: float) -> bool:
    """``value`` strictly above ``reference`` as estimates (False when either is NaN): for
    descriptive numbers only (AC, a curve's first share above a level); a criterion is judged
    by its interval (``combined_verdict``)."""
    return bool(value > reference)


def combined_verdict(verdicts: Iterable[str | None]) -> str | None:
    """One verdict over several metrics' verdicts: not met when one is not met, met when all are
    met, within noise otherwise; None when one is missing (not judged, or no queries)."""
    verdicts = list(verdicts)
    if not verdicts or any(v not in (MET, NOT_MET, WITHIN_NOISE) for v in verdicts):
        return None
    if NOT_MET in verdicts:
        return NOT_MET
    return MET if all(v == MET for v in verdicts) else WITHIN_NOISE


def update_gain(new_old: float, old_old: float, reference: float) -> float:
    """The share of the reference's improvement over the old model that ``new_old`` reaches; NaN
    unless ``reference`` is above ``old_old``."""
    if not beats(reference, old_old):
        return math.nan
    return (new_old - old_old) / (reference - old_old)


def flips_allowed(row: dict) -> bool:
    """Whether a report row's negative flips are within ``score.max_flip_rate``: True where none
    is set or the row's flips were not counted (``pipeline.score.flips``)."""
    within = row.get("flips_within_limit")
    return within is None or pd.isna(within) or bool(within)


def judged_metrics(row: dict, suffix: str = "") -> list[str]:
    """The criterion metrics a report row has (mAP only where the full ranking was scored)."""
    return [m for m in CRITERION_METRICS if f"{m}{suffix}" in row]


def pair_verdict(row: dict, suffix: str = "") -> str | None:
    """The ``combined_verdict`` of a report row's criterion metrics on one query subset
    (``suffix``: "", "_seen", "_unseen"); None where the row has no interval (the diagonal, a
    reference not scored, ``score.bootstrap_resamples`` 0)."""
    metrics = judged_metrics(row, suffix)
    verdicts = [row.get(f"verdict_{m}{suffix}") for m in metrics]
    return combined_verdict(None if v is None or pd.isna(v) else str(v) for v in verdicts)


def pair_decision(row: dict) -> Decision | None:
    """A report row's ``Decision`` over all its queries; None where it has no verdict."""
    verdict = pair_verdict(row)
    if verdict is None:
        return None
    return Decision.BACKFILL if not flips_allowed(row) else DECISION_OF_VERDICT[verdict]


def pair_row(table: pd.DataFrame, query: str, gallery: str) -> dict | None:
    """The report row of (``query``, ``gallery``) as a dict; None when the pair was not scored."""
    rows = table[(table.query_model == query) & (table.gallery_model == gallery)]
    return None if rows.empty else rows.iloc[0].to_dict()


def cell(table: pd.DataFrame, query: str, gallery: str, metric: str) -> float:
    """One metric of one pair; NaN when the pair was not scored or has no such column."""
    row = pair_row(table, query, gallery)
    return math.nan if row is None or metric not in row else float(row[metric])
