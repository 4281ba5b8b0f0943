"""The score step: every pair scored into the report table (``pipeline.score.matrix``), written as
Parquet/CSV, heat map, text matrix and ``entries.json``, and logged as one MLflow run."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from mlflow.entities import Metric, Param, RunTag  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from mlflow.utils.validation import MAX_TAG_VAL_LENGTH  # noqa: E402

from pipeline.atomic import one_writer, write_atomic, write_text_atomic  # noqa: E402
from pipeline.config import RunContext, ScoreConfig  # noqa: E402
from pipeline.model.card import read_encoder_card  # noqa: E402
from pipeline.score.criteria import CRITERION_METRICS, Decision, flips_allowed, judged_metrics, pair_decision  # noqa: E402,E501
from pipeline.score.entries import MatrixEntry, MatrixRoles, describe  # noqa: E402
from pipeline.score.matrix import flips_per_class, matrix, score_pairs  # noqa: E402
from pipeline.score.uncertainty import format_difference  # noqa: E402
from pipeline.tracking import DESCRIPTION_TAG, experiment_id, finished_run, log_dataset, metric_key  # noqa: E402

log = logging.getLogger(__name__)
REPORT_FILE = "report.parquet"  # the report's table; report.csv beside it for spreadsheets
ENTRIES_FILE = "entries.json"
VERDICTS_FILE = "verdicts.md"
FLIPS_PER_CLASS_FILE = "flips_per_class.csv"


def write_tables(table: pd.DataFrame, out_dir: str | Path) -> dict[str, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"parquet": out_dir / REPORT_FILE, "csv": (out_dir / REPORT_FILE).with_suffix(".csv")}
    write_atomic(paths["parquet"], lambda temporary: table.to_parquet(temporary, index=False))
    write_atomic(paths["csv"], lambda temporary: table.to_csv(temporary, index=False))
    return paths


def read_table(report_dir: str | Path) -> pd.DataFrame:
    """The table of a report folder that ``score_and_report`` wrote."""
    return pd.read_parquet(Path(report_dir) / REPORT_FILE)


def _matrix_panel(figure: plt.Figure, axis: plt.Axes, values: np.ndarray, order: list[str], title: str,
                  top: float = 100) -> None:
    """One matrix as a colour grid with its numbers printed in the cells (values in %, the colours
    from 0 to ``top``)."""
    image = axis.imshow(values, cmap="viridis", vmin=0, vmax=top)
    axis.set_xticks(range(len(order)), order, rotation=30, ha="right")
    axis.set_yticks(range(len(order)), order)
    axis.set_xlabel("gallery model")
    axis.set_ylabel("query model")
    axis.set_title(title)
    for i in range(len(order)):
        for j in range(len(order)):
            axis.text(j, i, "-" if np.isnan(values[i, j]) else f"{values[i, j]:.1f}", ha="center", va="center",
                      color="white" if values[i, j] < 0.6 * top else "black", fontsize=9)
    figure.colorbar(image, ax=axis, fraction=0.046)


def heatmap(table: pd.DataFrame, order: list[str], path: str | Path,
            metrics: tuple[str, ...] = CRITERION_METRICS, titles: dict[str, str] | None = None,
            top: float = 100) -> Path:
    """One panel per metric: rows = query model, columns = gallery model, values in the cells (%,
    coloured from 0 to ``top``)."""
    size = 2.5 + 0.9 * len(order)
    figure, axes = plt.subplots(1, len(metrics), figsize=(size * len(metrics), size - 0.8), squeeze=False)
    for axis, metric in zip(axes[0], metrics):
        _matrix_panel(figure, axis, matrix(table, metric, order).to_numpy() * 100, order,
                      (titles or {}).get(metric, f"{metric} (%)"), top)
    return save_figure(figure, path, dpi=120)


def save_figure(figure: plt.Figure, path: str | Path, dpi: int = 110) -> Path:
    """``figure`` laid out and written to ``path`` as PNG through a temporary name, then closed."""
    figure.tight_layout()
    write_atomic(path, lambda temporary: figure.savefig(temporary, dpi=dpi, format="png"))
    plt.close(figure)
    return Path(path)


def format_matrix(table: pd.DataFrame, order: list[str], metric: str) -> str:
    """The matrix of one metric as aligned text, in percent."""
    values = matrix(table, metric, order) * 100
    width = max(10, *(len(name) for name in order)) + 2
    lines = [f"{metric} (%)  rows: query model, columns: gallery model",
             " " * width + "".join(f"{name:>{width}}" for name in order)]
    for query in order:
        lines.append(f"{query:<{width}}" + "".join(f"{values.loc[query, g]:>{width}.2f}" for g in order))
    return "\n".join(lines)


def row_metrics(row: dict) -> dict[str, float]:
    """The metric columns of one report row (NaN left out)."""
    return {column: float(value) for column, value in row.items()
            if column.startswith(("top", "map", "update_gain", "ivf_", "delta_", "negative_flip_rate"))
            and isinstance(value, float)
            and not math.isnan(value)}


def verdicts_markdown(table: pd.DataFrame, level: float) -> str:
    """Each judged cell of the criterion as a Markdown table: the pair, the metric and query
    subset, ``M(q, g) - M(r, r)`` in points with its paired bootstrap interval, and the verdict."""
    judged = [column.removeprefix("verdict_") for column in table.columns if column.startswith("verdict_")]
    lines = [f"Criterion cells: M(query, gallery) - M(reference, reference) in points of %, with its "
             f"{level:.0%} paired bootstrap interval over the queries (pipeline.score.uncertainty).", "",
             "| query | gallery | metric | difference [interval] | verdict |", "|---|---|---|---|---|"]
    for row in table.to_dict("records"):
        for name in judged:
            if pd.isna(row[f"verdict_{name}"]):
                continue
            difference = format_difference(*(row[f"delta_{name}{end}"] for end in ("", "_low", "_high")))
            lines.append(f"| {row['query_model']} | {row['gallery_model']} | {name} | {difference} | "
                         f"{row[f'verdict_{name}']} |")
    return "\n".join(lines) + "\n"


def decided_rows(table: pd.DataFrame, old: str | None = None) -> list[dict]:
    """The report rows with a decision in table order, those judged against ``old``'s own pair
    (its gallery, mapped by T12 or not: the upgrade's decisions) first."""
    rows = [row for row in table.to_dict("records") if "decision" in row and not pd.isna(row["decision"])]
    return sorted(rows, key=lambda row: row.get("reference_model") != old)


SUBSET_NAMES = {"": "", "_seen": "seen classes ", "_unseen": "unseen classes "}


def interval_cells(row: dict, subsets: tuple[str, ...] = ("",)) -> list[str]:
    """A judged row's criterion cells as ``top1 +4.53 [+3.74, +5.31] met``, per query subset of
    ``subsets`` it has (named: ``seen classes top1 ...``), and its flips when over the limit."""
    cells = [f"{SUBSET_NAMES[s]}{m} "
             f"{format_difference(row[f'delta_{m}{s}'], row[f'delta_{m}{s}_low'], row[f'delta_{m}{s}_high'])} "
             f"{row[f'verdict_{m}{s}']}" for s in subsets for m in judged_metrics(row, s)
             if not pd.isna(row.get(f"verdict_{m}{s}", None))]
    if not flips_allowed(row):
        cells.append(f"negative flips {100 * row['negative_flip_rate']:.2f} % over the limit")
    return cells


def decision_line(row: dict) -> str:
    """``<query> -> <gallery>: <decision> (top1 +4.53 [+3.74, +5.31] met; map ...)``, then the same
    on the seen and unseen classes where the report has them (shown, not deciding)."""
    return f"{row['query_model']} -> {row['gallery_model']}: {pair_decision(row) or 'not judged'} " \
           f"({'; '.join(interval_cells(row, tuple(SUBSET_NAMES)))})"


def decisions_markdown(table: pd.DataFrame, level: float, old: str | None = None, upgrade_only: bool = False) -> str:
    """One line per judged pair with its decision and the intervals it rests on (``decided_rows``);
    with ``upgrade_only``, only the pairs judged against ``old``'s own (its gallery, mapped or not)."""
    lines = [f"Decisions ({', '.join(str(d) for d in Decision)}): ship when M(query, gallery) - M(reference, "
             f"reference) is above 0 on every criterion metric by its {level:.0%} paired interval (and negative flips "
             "are within score.max_flip_rate where one is set); inconclusive when an interval holds 0 and none lies "
             "below (more queries, or a backfill, settle it); backfill otherwise.", ""]
    rows = [row for row in decided_rows(table, old) if not upgrade_only or row.get("reference_model") == old]
    return "\n".join(lines + [f"- {decision_line(row)}" for row in rows])


def flips_markdown(table: pd.DataFrame, max_rate: float | None) -> str:
    """Each judged pair's negative flip rate (overall and per query subset) as a Markdown table."""
    subsets = [s for s in ("", "_seen", "_unseen") if f"negative_flip_rate{s}" in table.columns]
    limit = f"at most {100 * max_rate:.2f} % allowed" if max_rate is not None else "not judged (score.max_flip_rate)"
    lines = ["Negative flips: queries whose top-1 is right under the gallery's reference pair (what the gallery's "
             "users get today: its model's own pair, the old model's for an old gallery; for a model's own pair, the "
             f"old model's) and wrong under the pair, in % of the queries; {limit}.",
             "", "| query | gallery | " + " | ".join(f"flips{s or ' (all)'}" for s in subsets)
             + " | within the limit |",
             "|---|---|" + "---|" * (len(subsets) + 1)]
    for row in table.to_dict("records"):
        if pd.isna(row["negative_flip_rate"]):
            continue
        rates = " | ".join("-" if pd.isna(rate) else f"{100 * rate:.2f}"
                           for rate in (row[f"negative_flip_rate{s}"] for s in subsets))
        within = "-" if max_rate is None else ("yes" if flips_allowed(row) else "**no**")
        lines.append(f"| {row['query_model']} | {row['gallery_model']} | {rates} | {within} |")
    return "\n".join(lines) + "\n"


def cell_metrics(table: pd.DataFrame) -> dict[str, float]:
    """Every row's metrics as ``<metric>/<query>/<gallery>``."""
    return {metric_key(column, row["query_model"], row["gallery_model"]): value
            for row in table.to_dict("records") for column, value in row_metrics(row).items()}


def matrix_markdown(table: pd.DataFrame, order: list[str], metric: str) -> str:
    """The matrix of one metric as a Markdown table, in percent (rows: query model)."""
    values = matrix(table, metric, order) * 100
    lines = [f"| {metric} (%): query \\ gallery | " + " | ".join(order) + " |", "|---" * (len(order) + 1) + "|"]
    lines += [f"| **{query}** | " + " | ".join("" if pd.isna(v) else f"{v:.1f}" for v in values.loc[query]) + " |"
              for query in order]
    return "\n".join(lines)


def report_description(table: pd.DataFrame, order: list[str], run_id: str, old: str | None = None) -> str:
    """The compatibility run's Description in the MLflow UI: each decision with the pairs it
    names, the heat map (the run's own artifact, served by the tracking server) and the matrix of
    each metric."""
    decided = decided_rows(table, old)
    counts = "; ".join(f"{decision}: " + ", ".join(f"{r['query_model']} -> {r['gallery_model']}" for r in rows)
                       for decision in Decision
                       if (rows := [r for r in decided if r["decision"] == decision]))
    summary = (f"Compatibility of {len(order)} models ({', '.join(order)}), {len(decided)} pairs judged. "
               f"{counts or 'No pair was judged.'} (Intervals in verdicts.md; a decision/<query>/<gallery> tag per pair.)")
    shown = [m for m in CRITERION_METRICS if m in table.columns]
    tables = "\n\n".join(matrix_markdown(table, order, m) for m in shown)
    head = f"{summary}\n\n![heat map](get-artifact?path=heatmap.png&run_uuid={run_id})\n\n"
    text = f"{head}{tables}\n"
    return text if len(text) <= MAX_TAG_VAL_LENGTH else f"{head}The matrix: matrix.txt.\n"  # MLflow's tag limit


def log_metrics(client: MlflowClient, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    """Metrics in batches of at most 900 (MLflow's limit per call is 1000)."""
    items = [Metric(key, value, 0, step) for key, value in metrics.items()]
    for start in range(0, len(items), 900):
        client.log_batch(run_id, metrics=items[start : start + 900])


def log_report(table: pd.DataFrame, order: list[str], files: list[Path], tracking_uri: str, experiment: str,
               run_name: str = "compatibility-matrix", old: str | None = None) -> str:
    """One MLflow run: each cell a metric ``<metric>/<query>/<gallery>``, each judged pair's
    decision and verdicts as tags, the decisions in its Description, files as artifacts."""
    client = MlflowClient(tracking_uri)
    run = client.create_run(experiment_id(tracking_uri, experiment), run_name=run_name, tags={"kind": "score"})
    run_id = run.info.run_id
    with finished_run(client, run_id):
        log_metrics(client, run_id, cell_metrics(table))
        client.log_batch(run_id, params=[Param("models", ",".join(order))])
        client.set_tag(run_id, DESCRIPTION_TAG, report_description(table, order, run_id, old))
        for name in order:  # each model's scored set: the Dataset column of the runs table
            folder = table.loc[table["query_model"] == name, "query_embeddings"].iloc[0]
            log_dataset(client, run_id, folder, f"{name} embeddings", "scoring")
        tags = []
        for row in table.to_dict("records"):
            if "decision" in row and not pd.isna(row["decision"]):
                tags.append(RunTag(metric_key("decision", row["query_model"], row["gallery_model"]), row["decision"]))
            tags += [RunTag(metric_key(column, row["query_model"], row["gallery_model"]), row[column])
                     for column in row if column.startswith("verdict_") and not pd.isna(row[column])]
        for start in range(0, len(tags), 100):  # MLflow's limit of tags per call
            client.log_batch(run_id, tags=tags[start : start + 100])
        for path in files:
            client.log_artifact(run_id, str(path))
    return run_id


def roles_of(old_model: str | Path, independent: str | None = None) -> MatrixRoles:
    """The roles of a report whose old model is the artifact at ``old_model``."""
    card = read_encoder_card(old_model)
    return MatrixRoles(old=card.name, old_classes=card.classes, independent=independent)


def score_and_report(entries: dict[str, MatrixEntry], roles: MatrixRoles, options: ScoreConfig, out_dir: str | Path,
                     context: RunContext, pairs: list[tuple[str, str]] | None = None) -> str:
    """Score ``pairs`` of ``entries`` (default all), write the report to ``out_dir``, log it; returns
    the printed matrix, verdicts and, last, the decisions on the old model's gallery (every pair's
    are in verdicts.md). Each pair's row is kept in ``out_dir/pairs``, so that a rerun after a
    kill scores only the pairs not done yet."""
    out_dir = Path(out_dir)
    with one_writer(out_dir):  # another job writing this report is refused, naming it
        return _score_and_report(entries, roles, options, out_dir, context, pairs)


def _score_and_report(entries: dict[str, MatrixEntry], roles: MatrixRoles, options: ScoreConfig, out_dir: Path,
                      context: RunContext, pairs: list[tuple[str, str]] | None) -> str:
    scored = score_pairs(entries, roles, options, pairs, pair_dir=out_dir / "pairs")
    table, order = scored.table, list(entries)
    shown = tuple(metric for metric in CRITERION_METRICS if metric in table.columns)  # no mAP without the full ranking
    files = list(write_tables(table, out_dir).values()) + [heatmap(table, order, out_dir / "heatmap.png", shown)]
    text = "\n\n".join(format_matrix(table, order, metric) for metric in shown)
    documents = [("matrix.txt", text + "\n"), (ENTRIES_FILE, json.dumps(describe(entries), indent=1))]
    verdicts = decisions = upgrade = ""
    if any(column.startswith("verdict_") for column in table.columns):
        verdicts = verdicts_markdown(table, options.interval_level)
        decisions = decisions_markdown(table, options.interval_level, roles.old)
        upgrade = decisions_markdown(table, options.interval_level, roles.old, upgrade_only=roles.old is not None)
    if scored.flips:
        verdicts += ("\n" if verdicts else "") + flips_markdown(table, options.max_flip_rate)
        per_class = flips_per_class(scored, next(iter(entries.values())).embeddings.classes)
        write_atomic(out_dir / FLIPS_PER_CLASS_FILE, lambda temporary: per_class.to_csv(temporary, index=False))
        worst = max(10.0, 100 * float(table["negative_flip_rate"].max()))
        files += [out_dir / FLIPS_PER_CLASS_FILE,
                  heatmap(table, order, out_dir / "flips.png", ("negative_flip_rate",),
                          {"negative_flip_rate": "negative flips (% of queries)"}, top=worst)]
    if verdicts:  # verdicts.md: the decisions first
        documents.append((VERDICTS_FILE, f"{decisions}\n\n{verdicts}"))
    for name, content in documents:
        write_text_atomic(out_dir / name, content)
        files.append(out_dir / name)
    run_id = log_report(table, order, files, context.tracking_uri, context.experiment, old=roles.old)
    log.info("score: report in %s, MLflow run %s", out_dir, run_id)
    return "\n\n".join(part for part in (text, verdicts, upgrade) if part)  # it ends with the upgrade's decisions
