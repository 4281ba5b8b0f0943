"""The compatibility criterion, the update gain and the cell lookup (design notes, section 3),
written once for the report, the scenario tables, the lineage, validation and the sweep.

- criterion: ``M(new, old) > M(old, old)``, strict (a tie fails, and so does a NaN);
- update gain: ``(M(new, old) - M(old, old)) / (M(ref, ref) - M(old, old))`` with ``ref`` the
  reference new model (the independently trained one; in a lineage the new model itself). It is
  undefined (NaN; "-" in Markdown) unless the reference beats the old model: with no upgrade
  there is nothing to gain, and a span of the other sign would flip the gain's sign;
- a cell: one metric of one (query model, gallery model) row of a report table;
- where ``score.max_flip_rate`` is set, a pair passes only with its negative flips within it.
"""

from __future__ import annotations

import math

import pandas as pd

CRITERION_METRICS = ("top1", "map")  # what the criterion judges, and the gain, curves and heat maps show


def beats(value: float, reference: float) -> bool:
    """The criterion: ``value`` strictly above ``reference`` (False when either is NaN)."""
    return bool(value > reference)


def update_gain(new_old: float, old_old: float, reference: float) -> float:
    """The share of the reference's improvement over the old model that ``new_old`` reaches; NaN
    unless ``reference`` beats ``old_old``."""
    if not beats(reference, old_old):
        return math.nan
    return (new_old - old_old) / (reference - old_old)


def flips_allowed(row: dict) -> bool:
    """Whether a report row's negative flips are within ``score.max_flip_rate``: True where none
    is set or the row's flips were not counted (``pipeline.score.flips``)."""
    within = row.get("flips_within_limit")
    return within is None or pd.isna(within) or bool(within)


def pair_row(table: pd.DataFrame, query: str, gallery: str) -> dict | None:
    """The report row of (``query``, ``gallery``) as a dict; None when the pair was not scored."""
    rows = table[(table.query_model == query) & (table.gallery_model == gallery)]
    return None if rows.empty else rows.iloc[0].to_dict()


def cell(table: pd.DataFrame, query: str, gallery: str, metric: str) -> float:
    """One metric of one pair; NaN when the pair was not scored or has no such column."""
    row = pair_row(table, query, gallery)
    return math.nan if row is None or metric not in row else float(row[metric])
