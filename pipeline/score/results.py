"""The results table of a scenario: every method's compatibility, mean and standard deviation over seeds.

Reads a finished pipeline run (``report/report.parquet`` and ``report/entries.json``) and its
config (models named ``<name>-s<seed>`` by ``pipeline.config.expand_seeds``). One row per matrix
entry other than the old model, seeds folded: a plain model is searched against the old gallery
directly, ``<model>.t21`` through its backward transformation, ``<old>.t12.<model>`` by mapping
the old gallery forward. Nothing here is typed by hand: every number is a cell of the report.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.compat.methods import Kind, Role, Route, entry_carrier, method_named
from pipeline.config import PipelineConfig
from pipeline.score.criteria import CRITERION_METRICS, beats, cell, update_gain
from pipeline.score.report import ENTRIES_FILE

SUBSETS = ("", "_seen", "_unseen")
UPGRADE_TOP1 = 0.03  # a scenario is an upgrade when the independent new model beats old/old by this much top-1


@dataclass(frozen=True)
class EntryRoute:
    """How one matrix entry is searched against the old model's gallery."""

    new_query: str    # the query side of the new/old cell
    old_gallery: str  # the gallery side of the new/old cell
    base: str         # the new model whose own new/new cell the row reports
    route: Route


def route_of(name: str, entry: dict[str, str], old: str) -> EntryRoute:
    if entry["transform"] == "none":
        return EntryRoute(name, old, name, Route.DIRECT)
    if entry["counterpart"] == old:  # new embeddings mapped into the old space
        return EntryRoute(name, old, entry["base"], Route.T21)
    return EntryRoute(entry["counterpart"], name, entry["base"], Route.T12)  # old gallery mapped forward


def seed_rows(table: pd.DataFrame, entries: dict[str, dict[str, str]], cfg: PipelineConfig) -> pd.DataFrame:
    """One row per (entry, seed): its cells against the old model, the criterion per subset and
    the update gain against the independent model of the same seed."""
    old = cfg.old.name
    models = {m.name: (m.method, m.seed) for m in cfg.new}
    cmc = {c.name: (c.method, c.seed) for c in cfg.cmc}
    independents = {m.seed: m.name for m in cfg.new if m.method_spec.role is Role.INDEPENDENT}
    rows = []
    for name, entry in entries.items():
        if name == old:
            continue
        route = route_of(name, entry, old)
        carrier = entry_carrier(name, old)
        method, seed = cmc.get(carrier) or models[carrier]
        row = {"entry": name.replace(f"-s{seed}", ""), "method": method, "route": route.route, "seed": seed,
               "transform": entry["transform"].replace(f"-s{seed}", "")}
        for metric in CRITERION_METRICS:
            row[f"new_new_{metric}"] = cell(table, route.base, route.base, metric)
            row[f"old_new_{metric}"] = cell(table, route.old_gallery, route.new_query, metric)
            for subset in SUBSETS:
                column = f"{metric}{subset}"
                row[f"old_old_{column}"] = cell(table, old, old, column)
                row[f"new_old_{column}"] = cell(table, route.new_query, route.old_gallery, column)
                row[f"pass_{column}"] = beats(row[f"new_old_{column}"], row[f"old_old_{column}"])
            independent = independents.get(seed)
            reference = cell(table, independent, independent, metric) if independent else np.nan
            row[f"update_gain_{metric}"] = update_gain(row[f"new_old_{metric}"], row[f"old_old_{metric}"], reference)
        row["pass_upgrade"] = bool(row["new_new_top1"] - row["old_old_top1"] >= UPGRADE_TOP1)  # NaN: False
        rows.append(row)
    return pd.DataFrame(rows)


def fold_seeds(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean and sample standard deviation (``_sd``; NaN for one seed) of every number over
    seeds; criterion as passes per seed."""
    value_columns = [c for c in rows.columns if c.startswith(("new_", "old_", "update_gain_"))]
    pass_columns = [c for c in rows.columns if c.startswith("pass_")]
    grouped = rows.groupby(["entry", "method", "route", "transform"], sort=False)
    folded = grouped[value_columns].mean()
    folded = folded.join(grouped[value_columns].std(ddof=1).add_suffix("_sd"))
    folded = folded.join(grouped[pass_columns].sum().astype(int)).join(grouped.size().rename("seeds"))
    return folded.reset_index()


def load_run(run_dir: str | Path) -> tuple[pd.DataFrame, dict[str, dict[str, str]]]:
    report = Path(run_dir) / "report"
    return (pd.read_parquet(report / "report.parquet"),
            json.loads((report / ENTRIES_FILE).read_text()))


def _value(row: pd.Series, column: str, percent: bool = True) -> str:
    """``mean ± sd`` (the mean alone for one seed)."""
    mean, sd = row[column], row[f"{column}_sd"]
    if np.isnan(mean):
        return "-"
    scale, digits = (100, 1) if percent else (1, 2)
    return f"{mean * scale:.{digits}f}" + ("" if np.isnan(sd) else f" ± {sd * scale:.{digits}f}")


def _verdict(row: pd.Series, subset: str) -> str:
    passes = min(row[f"pass_top1{subset}"], row[f"pass_map{subset}"])
    if np.isnan(row[f"new_old_top1{subset}"]):
        return "-"
    return f"{'pass' if passes == row['seeds'] else 'FAIL'} {passes}/{row['seeds']}"


def independent_row(folded: pd.DataFrame) -> pd.Series | None:
    """The independent new model's own row (searched directly), if the scenario trained one."""
    rows = [row for _, row in folded.iterrows()
            if method_named(row.method).role is Role.INDEPENDENT and row.route == Route.DIRECT]
    return rows[0] if rows else None


def upgrade_line(independent: pd.Series | None) -> str:
    """How much the independent new model beats old/old by on top-1: whether the scenario is an upgrade."""
    if independent is None:
        return "no independent new model: whether this is an upgrade is not measured"
    gap = (independent.new_new_top1 - independent.old_old_top1) * 100
    return (f"independent new/new top-1 {_value(independent, 'new_new_top1')}: {gap:+.1f} points over old/old, "
            f"an upgrade of at least {UPGRADE_TOP1 * 100:.0f} points in {int(independent.pass_upgrade)}/"
            f"{int(independent.seeds)} seeds")


def scenario_markdown(title: str, folded: pd.DataFrame, has_subsets: bool) -> list[str]:
    """One scenario's table: rows = entries, values = mean ± standard deviation over seeds."""
    first = folded.iloc[0]
    lines = [f"old/old: top-1 {_value(first, 'old_old_top1')}, mAP {_value(first, 'old_old_map')}"
             + (f"; seen classes top-1 {_value(first, 'old_old_top1_seen')}, mAP {_value(first, 'old_old_map_seen')};"
                f" unseen top-1 {_value(first, 'old_old_top1_unseen')}, mAP {_value(first, 'old_old_map_unseen')}"
                if has_subsets else ""), "", upgrade_line(independent_row(folded)), ""]
    header = ["entry", "method", "route", "new/new top-1", "new/old top-1", "new/old mAP", "old/new top-1"]
    if has_subsets:
        header += ["seen new/old top-1", "seen mAP", "unseen new/old top-1", "unseen mAP"]
    header += ["criterion all"] + (["criterion seen", "criterion unseen"] if has_subsets else []) + ["update gain top-1"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in folded.iterrows():
        cells = [row.entry, row.method, row.route, _value(row, "new_new_top1"), _value(row, "new_old_top1"),
                 _value(row, "new_old_map"), _value(row, "old_new_top1")]
        if has_subsets:
            cells += [_value(row, f"new_old_{c}") for c in ("top1_seen", "map_seen", "top1_unseen", "map_unseen")]
        cells += [_verdict(row, "")] + ([_verdict(row, "_seen"), _verdict(row, "_unseen")] if has_subsets else [])
        cells += [_value(row, "update_gain_top1", percent=False)]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return [f"### {title}", ""] + lines + [""]


def claim_checks(folded: pd.DataFrame, has_subsets: bool) -> list[tuple[str, bool]]:
    """The paper's claims (issue 3's acceptance) checked against the folded table."""
    subsets = SUBSETS if has_subsets else ("",)
    by_entry = {row.entry: row for _, row in folded.iterrows()}
    spec = {entry: method_named(row.method) for entry, row in by_entry.items()}
    lce_training = {entry for entry, method in spec.items() if method.kind is Kind.TRAIN and method.role is Role.LCE}
    independent = independent_row(folded)
    benchmark = next((row for entry, row in by_entry.items() if spec[entry].new_new_benchmark), None)
    checks = []
    if independent is not None:
        checks.append((f"an upgrade: independent new/new top-1 at least {UPGRADE_TOP1 * 100:.0f} points over old/old "
                       "in every seed", independent.pass_upgrade == independent.seeds))
    for entry, row in by_entry.items():
        if entry in lce_training and row.route in spec[entry].compatible_routes:
            passes = all(row[f"pass_{m}{s}"] == row.seeds for m in CRITERION_METRICS for s in subsets)
            checks.append((f"{row.entry} ({row.route}) meets the criterion in every seed"
                           + (", overall and on seen and unseen classes" if has_subsets else ""), passes))
    for entry, row in by_entry.items():
        if entry in lce_training and row.route == Route.DIRECT:
            if independent is not None:
                checks.append((f"{row.entry} new/new top-1 within 2 points of independent",
                               row.new_new_top1 >= independent.new_new_top1 - 0.02))
            if benchmark is not None:
                sd = 0.0 if np.isnan(benchmark.new_new_top1_sd) else benchmark.new_new_top1_sd
                checks.append((f"{row.entry} new/new top-1 at least {benchmark.method.upper()}'s minus its sd",
                               row.new_new_top1 >= benchmark.new_new_top1 - sd))
    if independent is not None and not np.isnan(independent.new_old_top1):  # not comparable across dimensions
        checks.append(("independent fails the criterion", independent.pass_top1 + independent.pass_map < 2 * independent.seeds))
    cmc = [(spec[entry], row) for entry, row in by_entry.items() if spec[entry].kind is Kind.CMC]
    baselines = {row.route: row for method, row in cmc if method.role is Role.BASELINE}
    pairs = {Route.T21: "(model 2 with T21, old)", Route.T12: "(model 2, old with T12)"}
    for method, row in ((method, row) for method, row in cmc if method.role is Role.LCE):
        checks.append((f"CMC {method.name}: {pairs[row.route]} meets the criterion in every seed",
                       row.pass_top1 == row.seeds and row.pass_map == row.seeds))
        if row.route in baselines:
            for metric, shown in (("top1", "top-1"), ("map", "mAP")):
                checks.append((f"CMC {method.name}: its {row.route} beats the RBT-style regression on new/old {shown}",
                               beats(row[f"new_old_{metric}"], baselines[row.route][f"new_old_{metric}"])))
    return checks
