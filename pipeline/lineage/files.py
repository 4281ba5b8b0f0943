"""The lineage report's files under ``<out>/report/``: the pair table, ``lineage.csv`` (AC, AM),
``backfill.csv``, ``verdicts.json``, one heat map per metric, ``backfill.png`` and ``summary.md``."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from pipeline.lineage.backfill import curve_area  # noqa: E402
from pipeline.lineage.metrics import LineageModel, Verdict  # noqa: E402
from pipeline.score.criteria import CRITERION_METRICS  # noqa: E402
from pipeline.score.matrix import matrix  # noqa: E402
from pipeline.score.report import heatmap, write_tables  # noqa: E402
from pipeline.score.uncertainty import format_difference  # noqa: E402


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
            axis.set_xlabel("gallery re-encoded with the new model (%)")
            axis.set_ylabel(f"{metric} (%)")
            axis.set_title(f"{model} queries: backfill")
            axis.legend(fontsize=8)
            axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _summary_markdown(table: pd.DataFrame, summary: pd.DataFrame, backfill: pd.DataFrame, verdicts: list[Verdict],
                      order: list[str]) -> str:
    lines = ["# Compatibility report", "", f"Lineage: {' -> '.join(order)}", "", "## Verdicts", "",
             "| model | parent | verdict | route | top-1 | parent top-1 | difference [interval] | mAP "
             "| parent mAP | difference [interval] | negative flips |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for v in verdicts:
        numbers = " | ".join(f"{_value(v.numbers, m)} | {_value(v.numbers, f'parent_{m}')} | "
                             f"{_difference(v.numbers, m)}" for m in ("top1", "map"))
        lines.append(f"| {v.model} | {v.parent} | **{v.statement}** | {v.route} | {numbers} | "
                     f"{_value(v.numbers, 'negative_flip_rate')} |")
    lines += ["", "Differences in points of %, with their paired bootstrap interval over the test queries (the "
              "report's score.interval_level); a verdict within noise: that interval holds 0, so another draw of "
              "queries could reverse it. Negative flips: the share of the queries whose top-1 is right under the "
              "parent's own pair and wrong on the route (at most score.max_flip_rate where one is set)."]
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
    lines += [f"| {a['model']} | {a['order']} | {_value(a, 'area_top1')} | {_value(a, 'area_map')} |"
              for a in backfill_areas(backfill)]
    lines += ["", *recommended_orders(backfill, verdicts)]
    return "\n".join(lines) + "\n"


def recommended_orders(backfill: pd.DataFrame, verdicts: list[Verdict]) -> list[str]:
    """Per model, the order to re-encode its parent's gallery in: the largest area (mAP where
    scored, else top-1) among the orders a backfill can follow (not the oracle's, which reads the
    new vectors), with its share for 95 % of the gain."""
    shares = {v.model: v.numbers for v in verdicts}
    lines = []
    for model, areas in pd.DataFrame(backfill_areas(backfill)).groupby("model", sort=False):
        metric = "area_map" if "area_map" in areas.columns else "area_top1"
        usable = areas[areas.order != "oracle"]
        best = usable.loc[usable[metric].idxmax()]
        share = shares.get(model, {}).get(f"share_for_95pct_gain/{best.order}", float("nan"))
        reach = f"{share:.0%} of the gallery re-encoded gives 95 % of the gain" if share == share else \
            "no share gives 95 % of the gain on every metric"
        lines.append(f"- {model}: re-encode {model}'s parent gallery in the **{best.order}** order (the largest "
                     f"{metric.removeprefix('area_')} area, {best[metric]:.4f}, of the orders a backfill can follow); "
                     f"{reach}.")
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


def write_report_files(table: pd.DataFrame, summary: pd.DataFrame, backfill: pd.DataFrame, verdicts: list[Verdict],
                 order: list[str], report_dir: Path, models: list[LineageModel]) -> list[Path]:
    files = list(write_tables(table, report_dir).values())
    for name, frame in (("lineage.csv", summary), ("backfill.csv", backfill)):
        frame.to_csv(report_dir / name, index=False)
        files.append(report_dir / name)
    (report_dir / "verdicts.json").write_text(json.dumps([asdict(v) for v in verdicts], indent=1))
    files.append(report_dir / "verdicts.json")
    for metric in summary.metric:
        ac, am = summary.set_index("metric").loc[metric, ["AC", "AM"]]
        files.append(heatmap(table, order, report_dir / f"heatmap_{metric}.png", metrics=(metric,),
                             titles={metric: f"{metric} (%): AC {ac:.2f}, AM {am * 100:.1f}"}))
    files.append(_backfill_plot(backfill, report_dir / "backfill.png"))
    (report_dir / "summary.md").write_text(_summary_markdown(table, summary, backfill, verdicts, order))
    files.append(report_dir / "summary.md")
    return files
