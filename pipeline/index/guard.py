"""The compatibility guard: vectors of two models meet in one index only where a report says so.

Adding a model's vectors to an index that holds another model's, or searching it with another
model's queries, mixes two embedding spaces; after a model change that is how a search service
silently degrades. The guard asks for the compatibility report (``report.parquet`` of
``jobs.score`` or of a lineage report: one row per (query model, gallery model) pair, with the
models' ids) and allows the pair only where its row's decision is ship
(``pipeline.score.criteria.pair_decision``: every criterion metric above the gallery model's own
by its paired interval, and negative flips within the report's limit); inconclusive and backfill
refuse it. Several reports may be given, and one that refuses a pair outweighs one that allows it.
The pair is the model whose vectors arrive (queries, or re-encoded gallery items: the
new model's queries will search them beside the old ones) against each model the index holds.
An explicit override (a reason) lets a refused pair through, logged and recorded in the index.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pipeline.score import REPORT_FILE, Decision, interval_cells, pair_decision

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelRef:
    """A model as the sets it wrote record it: its card's id and its name."""

    id: str
    name: str

    def __str__(self) -> str:
        return f"{self.name} ({self.id})"


class IncompatibleModels(ValueError):
    """Two models' vectors refused in one index."""


def read_report(path: str | Path) -> pd.DataFrame:
    """The pair table of a report folder (its ``report.parquet``) or file, with model ids."""
    path = Path(path)
    file = path / REPORT_FILE if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{path}: no compatibility report ({REPORT_FILE} of jobs.score or jobs.lineage)")
    table = pd.read_parquet(file)
    if table.empty:
        raise ValueError(f"{file}: the report has no pair")
    if not {"query_model_id", "gallery_model_id"} <= set(table.columns):
        raise ValueError(f"{file}: the report has no model ids (written before the guard existed): score the pair "
                         "again with jobs.score")
    return table.assign(report=str(file))


def refusal(query: ModelRef, gallery: ModelRef, reports: list[pd.DataFrame]) -> str | None:
    """Why ``query``'s vectors may not meet ``gallery``'s, or None: the same model, or a report
    that scored the pair allows it and none that scored it refuses it."""
    if query.id == gallery.id:
        return None
    if not reports:
        return "no compatibility report was given"
    allowed, missing, refused = False, [], []
    for table in reports:
        rows = table[(table.query_model_id == query.id) & (table.gallery_model_id == gallery.id)]
        source = table.report.iloc[0]
        if rows.empty:
            missing.append(f"{source} has no row for {query.name}'s queries on {gallery.name}'s gallery")
            continue
        if len(rows) > 1:
            raise ValueError(f"{source}: {len(rows)} rows for {query.name}'s queries on {gallery.name}'s gallery "
                             f"(rows {rows.index.tolist()}): which one judges the pair?")
        row = rows.iloc[0].to_dict()
        decision = pair_decision(row)
        if decision is Decision.SHIP:
            allowed = True
        elif decision is None:
            refused.append(f"{source} cannot judge {query.name} -> {gallery.name}: {gallery.name}/{gallery.name} was "
                           "not scored, or the report has no interval (score.bootstrap_resamples 0)")
        elif decision is Decision.INCONCLUSIVE:
            refused.append(f"{source} finds {query.name} -> {gallery.name} inconclusive "
                           f"({'; '.join(interval_cells(row))}): score the pair on more queries, or backfill")
        else:
            refused.append(f"{source} says {query.name} -> {gallery.name} needs a backfill "
                           f"({'; '.join(interval_cells(row))})")
    if allowed and not refused:
        return None
    return "; ".join(refused or missing)


def guard(action: str, arriving: ModelRef, held: list[ModelRef], reports: list[pd.DataFrame], where: str,
          override: str | None = None) -> list[dict]:
    """Refuse ``action`` (an ``IncompatibleModels`` naming both models and where the reports are)
    unless every model of ``held`` may meet ``arriving``; with an ``override`` (its reason), log
    each refused pair and return it as a record for the index's history."""
    refused = [(model, why) for model in held if (why := refusal(arriving, model, reports)) is not None]
    if not refused:
        return []
    if override:
        records = []
        for model, why in refused:
            log.warning("guard: %s: %s: %s's vectors meet %s's although %s (override: %s)", where, action,
                        arriving, model, why, override)
            records.append({"action": action, "arriving": arriving.id, "held": model.id, "refusal": why,
                            "override": override})
        return records
    lines = [f"{where}: refused to {action}: {arriving}'s vectors would meet {model}'s, and {why}"
             for model, why in refused]
    raise IncompatibleModels("\n".join(lines) + "\nScore the pair (python -m jobs.score --embeddings <both sets> "
                             "--old <the held model's name> --out <report folder>) and pass --report <report folder>, "
                             "or pass --override '<reason>' to do it anyway (logged in the index's history).")
