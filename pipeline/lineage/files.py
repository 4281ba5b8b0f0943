"""The lineage report's files under ``<out>/report/``: the pair table, ``lineage.csv`` (AC, AM),
``backfill.csv``, ``verdicts.json``, ``verdicts.md`` (each pair's decision and intervals), one heat map per metric, ``backfill.png``, the approximate
indexes on the mixed gallery (``indexes.csv``, ``indexes.png``) and ``summary.md``."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from pipeline.atomic import write_text_atomic  # noqa: E402
from pipeline.lineage.backfill import curve_area  # noqa: E402
from pipeline.lineage.measures import LineageMeasures  # noqa: E402
from pipeline.lineage.metrics import Verdict  # noqa: E402
from pipeline.lineage.selection import Candidate  # noqa: E402
from pipeline.score import (  # noqa: E402
    CRITERION_METRICS,
    VERDICTS_FILE,
    Decision,
    decision_line,
    decisions_markdown,
    format_difference,
    heatmap,
    index_advice,
    index_summary,
    matrix,
    pair_row,
    save_figure,
    verdicts_markdown,
    write_tables,
)


def backfill_areas(backfill: pd.DataFrame) -> list[dict]:
    return [{"model": model, "order": order,
             **{f"area_{m}": curve_area(curve, m) for m in CRITERION_METRICS if m in curve.columns}}
            for (model, order), curve in backfill.groupby(["model", "order"], sort=False)]


def _backfill_plot(backfill: pd.DataFrame, path: Path) -> Path:
    models = list(dict.fromkeys(backfill.model))
    metrics = [m for m in CRITERION_METRICS if m in backfill.columns]
    figure, axes = plt.subplots(len(models), len(metrics), figsize=(5 * len(metrics), 3.6 * len(models)), squeeze=False)
    for row, model in enumerate(models):
        for column, metric in enumerate(metrics):
            axis = axes[row][column]
            for order, curve in backfill[backfill.model == model].groupby("order", sort=False):
                axis.plot(curve.share * 100, curve[metric] * 100, marker="o",
                          label=f"{order} (area {curve_area(curve, metric):.3f})")
            _label(axis, "gallery re-encoded with the new model (%)", f"{metric} (%)", f"{model} queries: backfill")
    return save_figure(figure, path)


def _label(axis: plt.Axes, x: str, y: str, title: str) -> None:
    """A curve panel's axis labels, title, legend and grid."""
    axis.set_xlabel(x)
    axis.set_ylabel(y)
    axis.set_title(title)
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)


def _indexes_plot(indexes: pd.DataFrame, min_recall: float, path: Path) -> Path:
    """Per model, recall@k of each index (and training) against the re-encoded share."""
    models = list(dict.fromkeys(indexes.model))
    figure, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 3.8), squeeze=False)
    for axis, model in zip(axes[0], models):
        rows = indexes[indexes.model == model]
        for (kind, trained_on), curve in rows.groupby(["index", "trained_on"], sort=False):
            label = kind if trained_on == "-" else f"{kind}, trained on {trained_on}"
            axis.plot(curve.share * 100, curve.recall_at_k, marker="o", label=label)
        axis.axhline(min_recall, color="grey", linestyle="--", linewidth=1)
        _label(axis, f"gallery re-encoded in the {rows.order.iloc[0]} order (%)",
               f"recall@{rows.k.iloc[0]} against flat search", f"{model} queries: approximate indexes")
    return save_figure(figure, path)


def _indexes_markdown(indexes: pd.DataFrame, min_recall: float) -> list[str]:
    if indexes.empty:
        return []
    lines = ["", "## Approximate indexes while the backfill runs", "",
             "Each model's queries against its parent's gallery re-encoded in the recommended order, at each share: "
             "recall@k against flat search on the same mixed gallery (worst over the shares), latency of one query "
             "(slowest p99 over the shares) and the index's size on the whole re-encoded gallery (indexes.csv "
             "has every share, with top-1, mAP@k and build times). Indexes that learn from vectors are trained "
             "either once on the parent's vectors (the index serving before the upgrade, receiving the re-encoded "
             "vectors) or again on the mixed gallery at each share.", "",
             "| model | index | trained on | worst recall@k | holds | slowest p99 (ms) | MiB |", "|---|---|---|---|---|---|---|"]
    advice = []
    for model, rows in indexes.groupby("model", sort=False):
        summary = index_summary(rows, min_recall)
        lines += [f"| {model} | {r.factory} | {r.trained_on} | {r.worst_recall:.3f} | "
                  f"{'yes' if r.holds_recall else '**no**'} | {r.slowest_p99_ms:.3f} | {r.bytes / 2**20:.2f} |"
                  for r in summary.itertuples()]
        advice.append(f"- {model}: {index_advice(summary, min_recall)}.")
    return lines + ["", f"Which index settings hold recall (recall@k >= {min_recall:.2f} at every share):", "", *advice]


def _verdict_rows(verdicts: list[Verdict]) -> list[str]:
    """The verdicts table: model, parent, decision, the chosen route's numbers and flips."""
    lines = ["| model | parent | decision | route | top-1 | parent top-1 | difference [interval] | mAP "
             "| parent mAP | difference [interval] | negative flips |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for v in verdicts:
        numbers = " | ".join(f"{_value(v.numbers, m)} | {_value(v.numbers, f'parent_{m}')} | "
                             f"{_difference(v.numbers, m)}" for m in ("top1", "map"))
        lines.append(f"| {v.model} | {v.parent} | **{v.statement}** | {v.route} | {numbers} | "
                     f"{_value(v.numbers, 'negative_flip_rate')} |")
    return lines


def _routes_markdown(table: pd.DataFrame, verdicts: list[Verdict], routes: dict[str, list[Candidate]]) -> list[str]:
    """Every route of each new model on the scored split, for reference beside the chosen one."""
    lines = ["", "Each model's routes on the scored split (the verdict is the chosen route's alone; the others are "
             "shown, not shopped among):", ""]
    chosen = {v.model: v.route for v in verdicts}
    for model, candidates in routes.items():
        for candidate in candidates:
            row = pair_row(table, candidate.query, candidate.gallery)
            if row is None or pd.isna(row.get("decision")):
                continue
            mark = " (chosen)" if candidate.pair == chosen.get(model) else ""
            lines.append(f"- {model}, {candidate.route}{mark}: {decision_line(row)}")
    return lines


def _summary_markdown(table: pd.DataFrame, summary: pd.DataFrame, backfill: pd.DataFrame, verdicts: list[Verdict],
                      order: list[str], indexes: pd.DataFrame, min_recall: float,
                      routes: dict[str, list[Candidate]]) -> str:
    lines = ["# Compatibility report", "", f"Lineage: {' -> '.join(order)}", "", "## Decisions", ""]
    lines += [f"- **{v.model}** (parent {v.parent}): **{v.statement}**, on {v.route}"
              + (f"; if backfilled, re-encode in the {v.backfill_order} order" if v.decision != Decision.SHIP
                 or v.forward else "") for v in verdicts]
    lines += ["", "Ship: every criterion metric of the route above the parent's own by its paired interval over the "
              "test queries (score.interval_level), negative flips within score.max_flip_rate where one is set; "
              "inconclusive: an interval holds 0 (another draw of queries could reverse it; more queries, or a "
              "backfill, settle it); backfill otherwise. The route and the backfill order were chosen on the "
              "training split's selection rows before the test split was read:", ""]
    lines += [f"- {v.model}: route {v.route}, {v.chosen}; order {v.backfill_order}, {v.order_chosen}."
              for v in verdicts]
    lines += ["", "## Verdicts", "", *_verdict_rows(verdicts), *_routes_markdown(table, verdicts, routes)]
    lines += ["", "Differences in points of %, with their paired bootstrap interval over the test queries. Negative "
              "flips: the share of the queries whose top-1 is right under the parent's own pair and wrong on the "
              "route."]
    lines += ["", "Share of the gallery to re-encode before the new model's queries beat the parent's own "
              "numbers on every metric (from the backfill curves; - when no share does):", ""]
    for v in verdicts:
        lines.append(f"- {v.model}: {_shares(v.numbers, 'share_to_beat_parent/')}")
    lines += ["", "Share of the gallery to re-encode for 95 % of the gain from the new model's queries on the "
              "parent gallery to its own (on every metric), by order; the oracle's reads the new vectors and "
              "labels, which a backfill cannot: the order a perfect prediction of the benefit would give, "
              "a reference rather than a bound on every metric:", ""]
    for v in verdicts:
        lines.append(f"- {v.model}: {_shares(v.numbers, 'share_for_95pct_gain/')}")
    lines += ["", "## Lineage summary (AC: cells below the diagonal; AM: the lower triangle with it)", "",
              "| metric | AC | AM |", "|---|---|---|"]
    lines += [f"| {r.metric} | {r.AC:.3f} | {r.AM:.4f} |" for r in summary.itertuples()]
    for metric in (m for m in ("top1", "map") if m in table.columns):
        grid = matrix(table, metric, order)
        lines += ["", f"## {metric} (rows: query model, columns: gallery model)", "",
                  "| | " + " | ".join(order) + " |", "|---" * (len(order) + 1) + "|"]
        lines += [f"| {q} | " + " | ".join(f"{grid.loc[q, g]:.4f}" for g in order) + " |" for q in order]
    lines += ["", "## Backfill (area under the curve over the re-encoded share)", "",
              "| model | order | area top-1 | area mAP |", "|---|---|---|---|"]
    lines += [f"| {a['model']} | {a['order']}{' (recommended)' if _recommended(verdicts, a) else ''} | "
              f"{_value(a, 'area_top1')} | {_value(a, 'area_map')} |" for a in backfill_areas(backfill)]
    lines += ["", *recommended_orders(verdicts)]
    lines += _indexes_markdown(indexes, min_recall)
    return "\n".join(lines) + "\n"


def _recommended(verdicts: list[Verdict], area: dict) -> bool:
    return any(v.model == area["model"] and v.backfill_order == area["order"] for v in verdicts)


def recommended_orders(verdicts: list[Verdict]) -> list[str]:
    """Per model, the order chosen on the selection rows, with its share for 95 % of the gain on
    the scored split."""
    lines = []
    for v in verdicts:
        share = v.numbers.get(f"share_for_95pct_gain/{v.backfill_order}", float("nan"))
        reach = f"{share:.0%} of the gallery re-encoded gives 95 % of the gain" if share == share else \
            "no share gives 95 % of the gain on every metric"
        lines.append(f"- {v.model}: re-encode {v.model}'s parent gallery in the **{v.backfill_order}** order "
                     f"({v.order_chosen}); on the scored split {reach}.")
    return lines


def _shares(numbers: dict, prefix: str) -> str:
    """Each order's share under ``prefix`` (``<prefix><order>``), - where none reaches it."""
    return ", ".join(f"{key.removeprefix(prefix)} {value:.2f}" if value == value else f"{key.removeprefix(prefix)} -"
                     for key, value in numbers.items() if key.startswith(prefix))


def _difference(numbers: dict, metric: str) -> str:
    """``M(model, parent) - M(parent, parent)`` in points with its interval, or - without one."""
    if f"delta_{metric}_low" not in numbers or metric not in numbers:
        return "-"
    return format_difference(numbers[metric] - numbers[f"parent_{metric}"], numbers[f"delta_{metric}_low"],
                             numbers[f"delta_{metric}_high"])


def _value(numbers: dict, key: str) -> str:
    return f"{numbers[key]:.4f}" if key in numbers else "-"


def write_report_files(measures: LineageMeasures, report_dir: Path, min_recall: float, level: float) -> list[Path]:
    """The report's files in ``report_dir`` (``pipeline.flows.lineage`` lists them), in the order MLflow logs them."""
    table, summary, backfill, verdicts = measures.table, measures.summary, measures.backfill, measures.verdicts
    order, indexes = measures.order, measures.indexes
    files = list(write_tables(table, report_dir).values())
    for name, frame in (("lineage.csv", summary), ("backfill.csv", backfill), ("indexes.csv", indexes)):
        write_text_atomic(report_dir / name, frame.to_csv(index=False))
        files.append(report_dir / name)
    write_text_atomic(report_dir / "verdicts.json", json.dumps([asdict(v) for v in verdicts], indent=1))
    write_text_atomic(report_dir / VERDICTS_FILE,
                      f"{decisions_markdown(table, level)}\n\n{verdicts_markdown(table, level)}")
    files += [report_dir / "verdicts.json", report_dir / VERDICTS_FILE]
    for metric in summary.metric:
        ac, am = summary.set_index("metric").loc[metric, ["AC", "AM"]]
        files.append(heatmap(table, order, report_dir / f"heatmap_{metric}.png", metrics=(metric,),
                             titles={metric: f"{metric} (%): AC {ac:.2f}, AM {am * 100:.1f}"}))
    files.append(_backfill_plot(backfill, report_dir / "backfill.png"))
    if not indexes.empty:
        files.append(_indexes_plot(indexes, min_recall, report_dir / "indexes.png"))
    write_text_atomic(report_dir / "summary.md", _summary_markdown(table, summary, backfill, verdicts, order, indexes,
                                                                   min_recall, measures.routes))
    files.append(report_dir / "summary.md")
    return files
