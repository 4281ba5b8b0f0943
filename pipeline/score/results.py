"""The results table of a scenario: every method's compatibility over seeds, each verdict decided
by a paired interval over the test queries.

Reads a finished pipeline run (``report/report.parquet``, ``report/entries.json`` and each pair's
per-query values, ``report/pairs/<query>__<gallery>.queries.npz``) and its config (models named
``<name>-s<seed>`` by ``pipeline.config.expand_seeds``). One row per matrix entry other than the
old model: a plain model is searched against the old gallery directly, ``<model>.t21`` through its
backward transformation, ``<old>.t12.<model>`` by mapping the old gallery forward.

Every verdict is the paired bootstrap interval (``pipeline.score.uncertainty``) of a per-query
difference on the same test queries: met when it lies above 0, not met at or below, within noise
otherwise; a claim holds only when it is met in every seed.

- criterion: new/old minus old/old, on top-1 and on mAP (``combined_verdict``), overall and on the
  seen and unseen classes where the old model knew fewer;
- update gain at least ``GAIN_TARGET``: new/old - old/old - GAIN_TARGET x (independent/independent
  - old/old), on each metric and subset;
- an upgrade: independent new/new minus old/old at least ``UPGRADE_TOP1`` on top-1;
- two entries compared on the same queries (CMC's LCE beats the RBT-style regression; new/new
  within ``NEW_NEW_MARGIN`` of the independent model's or BCT's): their paired difference;
- pooled over seeds: each query's difference averaged over the seeds (the same test images in
  every seed), then one interval: the estimate over every seed's queries, with the queries' noise.

Nothing here is typed by hand: every number comes from the report and its per-query values.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.compat.methods import Kind, Role, Route, entry_carrier, method_named, method_of
from pipeline.config import PipelineConfig
from pipeline.score.criteria import CRITERION_METRICS, cell, combined_verdict, update_gain
from pipeline.score.matrix import pair_values_file
from pipeline.score.pairs import QueryValues, query_subsets
from pipeline.score.report import ENTRIES_FILE, read_table
from pipeline.score.uncertainty import (
    MET,
    NOT_MET,
    WITHIN_NOISE,
    Interval,
    aligned,
    format_difference,
    paired_interval,
    ratio_interval,
)

SUBSETS = ("", "_seen", "_unseen")
UPGRADE_TOP1 = 0.05    # a scenario is an upgrade when independent new/new beats old/old by this much top-1
GAIN_TARGET = 0.5      # the update gain a route must reach to be worth shipping
NEW_NEW_MARGIN = 0.01  # how far below a reference model's new/new top-1 a compatible model may stay
NO_BACKFILL_ROUTES = (Route.DIRECT, Route.T21)
SHORT = {MET: "met", WITHIN_NOISE: "noise", NOT_MET: "not met"}


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


@dataclass
class Run:
    """A finished run's report, its entries and each pair's per-query values (read on demand)."""

    table: pd.DataFrame
    entries: dict[str, dict[str, str]]
    pairs_dir: Path | None = None
    _values: dict[tuple[str, str], tuple[QueryValues, dict] | None] = field(default_factory=dict)

    def values(self, query: str, gallery: str) -> QueryValues | None:
        """The pair's per-query values; None where the pair or its file is missing."""
        found = self._stored(query, gallery)
        return found[0] if found else None

    def seen_labels(self, old: str) -> list[int] | None:
        """The labels of the classes the old model was trained on, as the pairs were scored with
        (None: every class, no seen / unseen subsets)."""
        found = self._stored(old, old)
        return found[1].get("seen_labels") if found else None

    def _stored(self, query: str, gallery: str) -> tuple[QueryValues, dict] | None:
        if (query, gallery) not in self._values:
            path = pair_values_file(self.pairs_dir, query, gallery) if self.pairs_dir else None
            self._values[query, gallery] = QueryValues.load(path) if path and path.is_file() else None
        return self._values[query, gallery]


def load_run(report_dir: str | Path) -> Run:
    """A finished run's report folder (``pipeline.score.report.score_and_report``) read back."""
    report = Path(report_dir)
    return Run(read_table(report), json.loads((report / ENTRIES_FILE).read_text()),
               report / "pairs")


@dataclass(frozen=True)
class SeedValues:
    """Per-query values of one seed's entries, every array in the old/old pair's query order."""

    ids: np.ndarray
    masks: dict[str, np.ndarray]                    # query subset suffix -> mask
    old_old: dict[str, np.ndarray]                  # metric -> [Q]
    independent: dict[str, np.ndarray]              # metric -> [Q]; NaN without an independent model
    new_old: dict[str, dict[str, np.ndarray]]       # entry -> metric -> [Q]
    new_new: dict[str, dict[str, np.ndarray]]       # entry -> metric -> [Q] (of its base model)


@dataclass(frozen=True)
class SeedResults:
    """A scenario's rows per (entry, seed) and the per-query values behind their verdicts."""

    rows: pd.DataFrame
    values: dict[int, SeedValues]
    resamples: int = 1000
    level: float = 0.95

    def interval(self, values: np.ndarray, reference: np.ndarray) -> Interval:
        return paired_interval(values, reference, self.resamples, self.level)


def _per_query(run: Run, query: str, gallery: str, ids: np.ndarray) -> dict[str, np.ndarray]:
    """A pair's criterion metrics per query in the order ``ids`` (NaN where it was not scored)."""
    found = run.values(query, gallery) if query and gallery else None
    if found is None:
        return {m: np.full(len(ids), np.nan) for m in CRITERION_METRICS}
    return {m: aligned(ids, found.ids, found.values[m], f"{query} -> {gallery}") if m in found.values
            else np.full(len(ids), np.nan) for m in CRITERION_METRICS}


def scenario_rows(run: Run, cfg: PipelineConfig, resamples: int = 1000, level: float = 0.95) -> SeedResults:
    """One row per (entry, seed): its cells against the old model, and per metric and query subset
    the criterion, the update gain and whether it reaches ``GAIN_TARGET``, each by its interval."""
    old, table, entries = cfg.old.name, run.table, run.entries
    models = {m.name: (m.method, m.seed) for m in cfg.new}
    cmc = {c.name: (c.method, c.seed) for c in cfg.cmc}
    independents = {m.seed: m.name for m in cfg.new if method_of(m).role is Role.INDEPENDENT}
    reference = run.values(old, old)
    if reference is None:
        raise ValueError(f"{run.pairs_dir}: no per-query values of {old} -> {old}: score the run again")
    ids, masks = reference.ids, query_subsets(reference.labels, run.seen_labels(old))
    results = SeedResults(pd.DataFrame(), {}, resamples, level)  # what the intervals are computed with
    values: dict[int, SeedValues] = {}
    rows = []
    for name, entry in entries.items():
        if name == old:
            continue
        route = route_of(name, entry, old)
        carrier = entry_carrier(name, old)
        method, seed = cmc.get(carrier) or models[carrier]
        if seed not in values:
            independent = independents.get(seed)
            values[seed] = SeedValues(ids, masks, _per_query(run, old, old, ids),
                                      _per_query(run, independent, independent, ids), {}, {})
        seed_values = values[seed]
        seed_values.new_old[name] = _per_query(run, route.new_query, route.old_gallery, ids)
        seed_values.new_new[name] = _per_query(run, route.base, route.base, ids)
        row = {"entry": name.replace(f"-s{seed}", ""), "name": name, "method": method, "route": route.route,
               "seed": seed, "transform": entry["transform"].replace(f"-s{seed}", "")}
        independent = independents.get(seed)
        for metric in CRITERION_METRICS:
            row[f"new_new_{metric}"] = cell(table, route.base, route.base, metric)
            row[f"old_new_{metric}"] = cell(table, route.old_gallery, route.new_query, metric)
            for subset in SUBSETS:
                column = f"{metric}{subset}"
                row[f"old_old_{column}"] = cell(table, old, old, column)
                row[f"new_old_{column}"] = cell(table, route.new_query, route.old_gallery, column)
                reference_new = cell(table, independent, independent, column) if independent else np.nan
                row[f"update_gain_{column}"] = update_gain(row[f"new_old_{column}"], row[f"old_old_{column}"],
                                                           reference_new)
        for subset, mask in masks.items():
            row[f"criterion{subset}"], row[f"gain_target{subset}"] = _verdicts(results, seed_values, name, mask)
        rows.append(row)
    frame = pd.DataFrame(rows)
    upgrade = {seed: results.interval(v.independent["top1"], v.old_old["top1"] + UPGRADE_TOP1).verdict
               for seed, v in values.items()}
    frame["upgrade"] = frame.seed.map(upgrade)
    return SeedResults(frame, values, resamples, level)


def _verdicts(results: SeedResults, values: SeedValues, name: str, mask: np.ndarray) -> tuple[str | None, str | None]:
    """An entry's criterion and its ``GAIN_TARGET`` verdict on the queries of ``mask``, each over top-1 and mAP."""
    if not mask.any():
        return None, None
    criterion, gain = [], []
    for metric in CRITERION_METRICS:
        new_old, old_old = values.new_old[name][metric][mask], values.old_old[metric][mask]
        target = old_old + GAIN_TARGET * (values.independent[metric][mask] - old_old)
        criterion.append(results.interval(new_old, old_old).verdict)
        gain.append(results.interval(new_old, target).verdict)
    return combined_verdict(criterion), combined_verdict(gain)


def count_verdicts(verdicts: list[str | None]) -> str:
    """Per-seed verdicts as ``met 2, noise 1 / 3`` (``-`` when none was judged)."""
    judged = [v for v in verdicts if v in SHORT]
    if not judged:
        return "-"
    counts = [f"{SHORT[v]} {judged.count(v)}" for v in (MET, WITHIN_NOISE, NOT_MET) if v in judged]
    return f"{', '.join(counts)} / {len(verdicts)}"


def every_seed(verdicts: pd.Series | list, wanted: str = MET) -> bool:
    """Whether every seed's verdict is ``wanted`` (False with no seed)."""
    verdicts = list(verdicts)
    return bool(verdicts) and all(v == wanted for v in verdicts)


VERDICT_COLUMNS = tuple(f"{kind}{s}" for kind in ("criterion", "gain_target") for s in SUBSETS) + ("upgrade",)


def fold_seeds(results: SeedResults) -> pd.DataFrame:
    """One row per entry: the mean, sample standard deviation (``_sd``; NaN for one seed) and number
    of seeds with a value (``_n``) of every number, each verdict counted over seeds
    (``count_verdicts``), and the estimates pooled over the seeds' queries with their intervals
    (``pooled_<kind>_<metric>``, ``_low``, ``_high``: kind ``delta`` new/old minus old/old, ``gain``
    the update gain)."""
    rows = results.rows
    value_columns = [c for c in rows.columns if c.startswith(("new_", "old_", "update_gain_"))]
    grouped = rows.groupby(["entry", "method", "route", "transform"], sort=False)
    folded = grouped[value_columns].mean()
    folded = folded.join(grouped[value_columns].std(ddof=1).add_suffix("_sd"))
    folded = folded.join(grouped[value_columns].count().add_suffix("_n"))
    verdicts = [c for c in VERDICT_COLUMNS if c in rows.columns]
    folded = folded.join(grouped[verdicts].agg(lambda seeds: count_verdicts(list(seeds))))
    folded = folded.join(grouped.size().rename("seeds")).reset_index()
    pooled = [_pooled(results, rows[rows.entry == entry]) for entry in folded.entry]
    return pd.concat([folded, pd.DataFrame(pooled)], axis=1)


def _pooled(results: SeedResults, seeds: pd.DataFrame) -> dict[str, float]:
    """One entry's differences and update gains pooled over its seeds' queries (all queries)."""
    pooled = {}
    for metric in CRITERION_METRICS:
        new_old = np.stack([results.values[s].new_old[n][metric] for s, n in zip(seeds.seed, seeds.name)])
        old_old = np.stack([results.values[s].old_old[metric] for s in seeds.seed])
        independent = np.stack([results.values[s].independent[metric] for s in seeds.seed])
        with warnings.catch_warnings():  # a query with no value in any seed stays NaN and leaves the pairing
            warnings.simplefilter("ignore", RuntimeWarning)
            gained, upgrade = np.nanmean(new_old - old_old, axis=0), np.nanmean(independent - old_old, axis=0)
        for kind, interval in (("delta", paired_interval(gained, np.zeros_like(gained), results.resamples,
                                                          results.level)),
                               ("gain", ratio_interval(gained, upgrade, results.resamples, results.level))):
            pooled |= {f"pooled_{kind}_{metric}": interval.delta, f"pooled_{kind}_{metric}_low": interval.low,
                       f"pooled_{kind}_{metric}_high": interval.high}
    return pooled


def _value(row: pd.Series, column: str, percent: bool = True) -> str:
    """``mean ± sd`` (the mean alone for one seed), with the seeds it covers where a seed had none."""
    mean, sd, count = row[column], row[f"{column}_sd"], row[f"{column}_n"]
    if np.isnan(mean):
        return "-"
    scale, digits = (100, 1) if percent else (1, 2)
    text = f"{mean * scale:.{digits}f}" + ("" if np.isnan(sd) else f" ± {sd * scale:.{digits}f}")
    return text + (f" ({count} of {row['seeds']} seeds)" if count < row["seeds"] else "")


def _pooled_value(row: pd.Series, kind: str, metric: str) -> str:
    """A pooled estimate with its interval: points of % for a difference, a ratio for a gain."""
    delta, low, high = (row[f"pooled_{kind}_{metric}{end}"] for end in ("", "_low", "_high"))
    if np.isnan(delta):
        return "-"
    if kind == "delta":
        return format_difference(delta, low, high)
    return f"{delta:.2f} [{low:.2f}, {high:.2f}]"


def independent_row(folded: pd.DataFrame) -> pd.Series | None:
    """The independent new model's own row (searched directly), if the scenario trained one."""
    rows = [row for _, row in folded.iterrows()
            if method_named(row.method).role is Role.INDEPENDENT and row.route == Route.DIRECT]
    return rows[0] if rows else None


def upgrade_line(results: SeedResults, independent: pd.Series | None) -> str:
    """How much the independent new model beats old/old by on top-1, pooled over seeds, and in how
    many seeds by at least ``UPGRADE_TOP1`` (its interval above that)."""
    if independent is None:
        return "no independent new model: whether this is an upgrade is not measured"
    gaps = np.stack([v.independent["top1"] - v.old_old["top1"] for v in results.values.values()])
    with np.errstate(all="ignore"):
        pooled = paired_interval(np.nanmean(gaps, axis=0), np.zeros(gaps.shape[1]), results.resamples, results.level)
    return (f"independent new/new top-1 {_value(independent, 'new_new_top1')} against old/old "
            f"{_value(independent, 'old_old_top1')}: {format_difference(pooled.delta, pooled.low, pooled.high)} "
            f"points pooled over the seeds' queries; at least {UPGRADE_TOP1 * 100:.0f} points by its interval: "
            f"{independent.upgrade}")


def scenario_markdown(title: str, results: SeedResults, folded: pd.DataFrame, has_subsets: bool) -> list[str]:
    """One scenario's table: rows = entries, values = mean ± standard deviation over seeds, the
    pooled differences and gains with their intervals, the verdicts counted over seeds."""
    first = folded.iloc[0]
    lines = [f"old/old: top-1 {_value(first, 'old_old_top1')}, mAP {_value(first, 'old_old_map')}"
             + (f"; seen classes top-1 {_value(first, 'old_old_top1_seen')}, mAP {_value(first, 'old_old_map_seen')};"
                f" unseen top-1 {_value(first, 'old_old_top1_unseen')}, mAP {_value(first, 'old_old_map_unseen')}"
                if has_subsets else ""), "", upgrade_line(results, independent_row(folded)), ""]
    subsets = SUBSETS if has_subsets else ("",)
    names = {"": "", "_seen": " seen", "_unseen": " unseen"}
    header = ["entry", "method", "route", "new/new top-1", "new/old top-1", "new/old mAP", "Δ top-1 pooled",
              "Δ mAP pooled", *(f"criterion{names[s]}" for s in subsets), "gain top-1 pooled", "gain mAP pooled",
              *(f"gain ≥ {GAIN_TARGET}{names[s]}" for s in subsets)]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in folded.iterrows():
        cells = [row.entry, row.method, row.route, _value(row, "new_new_top1"), _value(row, "new_old_top1"),
                 _value(row, "new_old_map"), _pooled_value(row, "delta", "top1"), _pooled_value(row, "delta", "map"),
                 *(row[f"criterion{s}"] for s in subsets), _pooled_value(row, "gain", "top1"),
                 _pooled_value(row, "gain", "map"), *(row[f"gain_target{s}"] for s in subsets)]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return [f"### {title}", ""] + lines + [""]


def _seeds_of(results: SeedResults, entry: str) -> pd.DataFrame:
    return results.rows[results.rows.entry == entry]


def compare(results: SeedResults, entry: str, other: str, side: str, metric: str, margin: float = 0.0) -> list[str]:
    """Per seed, the verdict of ``entry``'s cell minus ``other``'s plus ``margin`` on the same queries
    (``side``: ``new_old`` against the old gallery, ``new_new`` on its own); seeds lacking either
    are left out."""
    mine, theirs = _seeds_of(results, entry), _seeds_of(results, other).set_index("seed")
    verdicts = []
    for seed, name in zip(mine.seed, mine.name):
        if seed in theirs.index:
            values = results.values[seed]
            verdicts.append(results.interval(getattr(values, side)[name][metric],
                                              getattr(values, side)[theirs.loc[seed, "name"]][metric] - margin).verdict)
    return verdicts


def claim_checks(results: SeedResults, has_subsets: bool) -> list[tuple[str, bool]]:
    """The claims checked on a scenario's table, each met in every seed by its interval."""
    rows, subsets = results.rows, SUBSETS if has_subsets else ("",)
    spec = {entry: method_named(method) for entry, method in zip(rows.entry, rows.method)}
    routes = dict(zip(rows.entry, rows.route))
    seeds = {entry: _seeds_of(results, entry) for entry in spec}
    lce_training = [e for e, m in spec.items() if m.kind is Kind.TRAIN and m.role is Role.LCE]
    independent = next((e for e, m in spec.items() if m.role is Role.INDEPENDENT and routes[e] == Route.DIRECT), None)
    benchmark = next((e for e, m in spec.items() if m.new_new_benchmark and routes[e] == Route.DIRECT), None)
    on_subsets = ", overall and on seen and unseen classes" if has_subsets else ""
    checks = []
    if independent is not None:
        checks.append((f"an upgrade: independent new/new top-1 at least {UPGRADE_TOP1 * 100:.0f} points over old/old "
                       "in every seed", every_seed(seeds[independent].upgrade)))
    for entry in lce_training:
        if routes[entry] in spec[entry].compatible_routes:
            checks.append((f"{entry} ({routes[entry]}) meets the criterion in every seed{on_subsets}",
                           all(every_seed(seeds[entry][f"criterion{s}"]) for s in subsets)))
    for entry in (e for e in lce_training if routes[e] == Route.DIRECT):
        for reference, name in ((independent, "independent"), (benchmark, benchmark and benchmark.upper())):
            if reference is not None:
                checks.append((f"{entry} new/new top-1 at most {NEW_NEW_MARGIN * 100:.0f} point below {name}'s",
                               every_seed(compare(results, entry, reference, "new_new", "top1", NEW_NEW_MARGIN))))
    if independent is not None and not np.isnan(rows[rows.entry == independent].new_old_top1).all():
        checks.append(("independent does not meet the criterion", every_seed(seeds[independent].criterion, NOT_MET)))
    cmc = [e for e, m in spec.items() if m.kind is Kind.CMC]
    baselines = {routes[e]: e for e in cmc if spec[e].role is Role.BASELINE}
    pairs = {Route.T21: "(model 2 with T21, old)", Route.T12: "(model 2, old with T12)"}
    for entry in (e for e in cmc if spec[e].role is not Role.BASELINE):
        route = routes[entry]
        checks.append((f"CMC {spec[entry].name}: {pairs[route]} meets the criterion in every seed",
                       every_seed(seeds[entry].criterion)))
        if route in baselines:
            for metric, shown in (("top1", "top-1"), ("map", "mAP")):
                checks.append((f"CMC {spec[entry].name}: its {route} beats the RBT-style regression on new/old {shown}",
                               every_seed(compare(results, entry, baselines[route], "new_old", metric))))
    for kind, allowed in (("needs no backfill (direct or T21)", NO_BACKFILL_ROUTES), ("maps the gallery (T12)",
                                                                                    (Route.T12,))):
        candidates = [e for e in spec if routes[e] in allowed and e != independent]
        reaching = [e for e in candidates if all(every_seed(seeds[e][f"gain_target{s}"]) for s in subsets)]
        shown = ", ".join(reaching) if reaching else "none"
        checks.append((f"a route that {kind} reaches update gain {GAIN_TARGET} on top-1 and mAP in every seed"
                       f"{on_subsets}: {shown}", bool(reaching)))
    return checks
