"""The lineage report: every model pair of v1 -> v2 -> ..., backfill curves, verdicts, MLflow.

Files under ``out_dir``:

    embeddings/<model>/<split>/   each model's embeddings (kept when already encoded by that model)
    embeddings/<entry>/<split>/   transformed entries (a model's T21, its parent's gallery through its T12)
    report/report.{parquet,csv}   one row per scored pair (pipeline.score.matrix)
    report/lineage.csv            AC and AM per metric
    report/backfill.csv           backfill curves: model, order, share, metrics
    report/verdicts.json          one verdict per new model, with the numbers behind it
    report/heatmap_<metric>.png   the N x N matrix per metric, numbers in the cells
    report/backfill.png, report/summary.md

MLflow: one run per report (params: registered model, versions, split, index), every cell as a
metric ``<metric>/<query>/<gallery>``, AC/AM, gains and backfill areas as metrics, verdicts as
tags, the files as artifacts; under it one nested run per pair with params ``query_model``,
``gallery_model``, ``transform`` and the pair's metrics, so the MLflow UI's run table lists,
sorts and compares pairs.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from mlflow.entities import Param  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from pipeline.compat.methods import t12_entry, t21_entry  # noqa: E402
from pipeline.compat.statistics import OldSpaceStats  # noqa: E402
from pipeline.config import EncodeConfig, RunContext, ScoreConfig  # noqa: E402
from pipeline.data.embeddings import open_embeddings  # noqa: E402
from pipeline.encode.mapped import matrix_entries  # noqa: E402
from pipeline.encode.split import encode_split  # noqa: E402
from pipeline.lineage.metrics import (  # noqa: E402
    Verdict,
    backfill_curve,
    curve_area,
    lower_triangle_summary,
    random_order,
    share_to_reach,
    stratified_order,
    verdict,
)
from pipeline.lineage.registry import STATS_FILE, download_version, registered_chain  # noqa: E402
from pipeline.model.artifacts import read_model_card  # noqa: E402
from pipeline.score.criteria import pair_row, update_gain  # noqa: E402
from pipeline.score.entries import MatrixEntry, MatrixRoles
from pipeline.score.matrix import Gallery, matrix, score_all_pairs  # noqa: E402
from pipeline.score.report import cell_metrics, heatmap, log_metrics, pair_compatible, row_metrics, write_tables  # noqa: E402
from pipeline.score.retrieval import in_memory, score_queries, summarize  # noqa: E402
from pipeline.tracking import experiment_id, finished_run, metric_key  # noqa: E402

log = logging.getLogger(__name__)
MATRIX_METRICS = ("top1", "top5", "map", "map_at_r")
BACKFILL_METRICS = ("top1", "map")


@dataclass(frozen=True)
class LineageModel:
    name: str            # the entry's name in the report, e.g. "v2"
    folder: Path         # its artifact folder
    parent: str | None   # the parent's entry name


@dataclass(frozen=True)
class LineageReport:
    report_dir: Path
    run_id: str
    table: pd.DataFrame
    summary: pd.DataFrame   # AC and AM per metric
    verdicts: list[Verdict]
    summary_text: str


def _encoded(model: LineageModel, dataset: Path, split: str, out_dir: Path, encode: EncodeConfig) -> Path:
    """``model``'s embeddings of ``split`` (``encode_split`` reuses those already written)."""
    return encode_split(model.folder, dataset, split, out_dir / "embeddings" / model.name / split, encode)


def _backfill(child: LineageModel, sets: dict[str, Gallery], seed: int, steps: int, full_ranking: bool) -> pd.DataFrame:
    """The child's queries against its parent's gallery re-encoded in random and in stratified order."""
    query, parent = sets[child.name].load(), sets[child.parent].load()
    if not np.array_equal(query.ids, parent.ids):
        raise ValueError(f"{child.name} and {child.parent} embeddings hold different images or orders "
                         f"({query.path}, {parent.path})")

    def score(mixed: np.ndarray) -> dict[str, float]:
        per_query = score_queries(query.vectors, query.labels, query.ids, in_memory(query.ids, query.labels, mixed),
                                  len(mixed), topk=(1,), full_ranking=full_ranking)
        return {m: v for m, v in summarize(per_query).items() if m in BACKFILL_METRICS}

    orders = {"random": random_order(len(parent.ids), seed)}
    centers = _parent_centers(child, parent.dim)
    if centers is not None:
        orders["stratified"] = stratified_order(parent.vectors, centers, seed)
    curves = [backfill_curve(parent.vectors, query.vectors, order, score, steps).assign(model=child.name, order=name)
              for name, order in orders.items()]
    return pd.concat(curves, ignore_index=True)


def _entries(models: list[LineageModel], sets: dict[str, Gallery], out_root: Path, split: str) -> dict[str, MatrixEntry]:
    """Each model's own entry, plus the entries its transformations make against its parent
    (``pipeline.encode.mapped``: its T21 queries, its parent's gallery through its T12)."""
    entries: dict[str, MatrixEntry] = {}
    for model in models:
        pair = {name: sets[name] for name in (model.name, model.parent) if name}
        found = matrix_entries({model.name: model.folder} if model.parent else {}, pair, model.parent or model.name,
                               out_root, split)
        entries = {**found, **entries}  # a model's own entry stays as first made
    return entries


def _parent_centers(child: LineageModel, parent_dim: int) -> np.ndarray | None:
    """The parent-space class centers of the child's statistics: the copy registered with the
    artifact (``pipeline.lineage.registry.STATS_FILE``), else the card's path; None (logged) if neither."""
    card = read_model_card(child.folder)
    for path in (child.folder / STATS_FILE, Path(card.stats_file or "")):
        if path.is_file():
            centers = OldSpaceStats.load(path).centers
            if centers.shape[1] != parent_dim:
                raise ValueError(f"{path}: statistics of dimension {centers.shape[1]}, the parent's embeddings have "
                                 f"{parent_dim}")
            return centers
    log.warning("lineage: no statistics for %s (card: %s); the backfill curve has the random order only",
                child.name, card.stats_file)
    return None


def _pairs(models: list[LineageModel], entries: dict[str, MatrixEntry]) -> list[tuple[str, str]]:
    """Every ordered pair of the lineage's models, and each transformed entry with its counterpart."""
    plain = [m.name for m in models]
    pairs = [(q, g) for q in plain for g in plain]
    for name, entry in entries.items():
        if entry.transform == "none":
            continue
        pairs.append((name, entry.counterpart) if entry.reference == name else (entry.counterpart, name))
    return [(q, g) for q, g in pairs if entries[q].embeddings.dim == entries[g].embeddings.dim]


def run_lineage_report(models: list[LineageModel], dataset: str | Path, out_dir: str | Path, context: RunContext, *,
                       registered_model: str = "", encode: EncodeConfig = EncodeConfig(),
                       score: ScoreConfig = ScoreConfig(), backfill_steps: int = 10, seed: int = 0) -> LineageReport:
    """Encode, score every pair, compute the lineage metrics, write the report and log it."""
    if len(models) < 2:
        raise ValueError(f"a lineage report needs at least two models, got {[m.name for m in models]}")
    dataset, out_dir, split = Path(dataset).resolve(), Path(out_dir), score.split
    report_dir = out_dir / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    sets: dict[str, Gallery] = {m.name: open_embeddings(_encoded(m, dataset, split, out_dir, encode))
                                for m in models}
    for child in models[1:]:
        if sets[child.name].dim != sets[child.parent].dim:
            raise ValueError(f"{child.name} ({sets[child.name].dim}-d) and its parent {child.parent} "
                             f"({sets[child.parent].dim}-d) differ in dimension: a lineage report compares every "
                             "model with its parent directly")
    entries = _entries(models, sets, out_dir / "embeddings", split)
    order = [m.name for m in models]
    table = score_all_pairs(entries, MatrixRoles(old_classes=read_model_card(models[0].folder).classes), score,
                            pairs=_pairs(models, entries))
    metrics = [m for m in MATRIX_METRICS if m in table.columns]
    summary = pd.DataFrame([{"metric": m, **dict(zip(("AC", "AM"), lower_triangle_summary(
        matrix(table, m, order).to_numpy())))} for m in metrics])

    cell = partial(pair_row, table)
    verdicts, gains, backfills = [], {}, []
    scored = [m for m in BACKFILL_METRICS if m in table.columns]
    for child in models[1:]:
        t21, t12 = t21_entry(child.name), t12_entry(child.parent, child.name)
        decided = verdict(child.name, child.parent, cell, t21 if t21 in entries else None, t12 if t12 in entries else None)
        for m in scored:
            gains[metric_key("update_gain", m, child.name)] = update_gain(
                cell(child.name, child.parent)[m], cell(child.parent, child.parent)[m], cell(child.name, child.name)[m])
        curves = _backfill(child, sets, seed, backfill_steps, score.full_ranking)
        parent_own = {m: cell(child.parent, child.parent)[m] for m in scored}
        needed = {f"share_to_beat_parent/{name}": share_to_reach(curve, parent_own)
                  for name, curve in curves.groupby("order", sort=False)}
        verdicts.append(replace(decided, numbers={**decided.numbers, **needed}))
        backfills.append(curves)
    backfill = pd.concat(backfills, ignore_index=True)
    files = _write_files(table, summary, backfill, verdicts, order, report_dir, models)
    text = (report_dir / "summary.md").read_text()
    run_id = _log_to_mlflow(table, summary, backfill, verdicts, gains, files, order, context.tracking_uri,
                            context.experiment, {"registered_model": registered_model, "models": ",".join(order),
                                                 "split": split, "index": score.index.kind,
                                                 "full_ranking": str(score.full_ranking)})
    log.info("lineage: report in %s, MLflow run %s", report_dir, run_id)
    return LineageReport(report_dir, run_id, table, summary, verdicts, text)


def _areas(backfill: pd.DataFrame) -> list[dict]:
    return [{"model": model, "order": order,
             **{f"area_{m}": curve_area(curve, m) for m in BACKFILL_METRICS if m in curve.columns}}
            for (model, order), curve in backfill.groupby(["model", "order"], sort=False)]


def _backfill_plot(backfill: pd.DataFrame, path: Path) -> Path:
    models = list(dict.fromkeys(backfill.model))
    metrics = [m for m in BACKFILL_METRICS if m in backfill.columns]
    figure, axes = plt.subplots(len(models), len(metrics), figsize=(5 * len(metrics), 3.6 * len(models)), squeeze=False)
    for row, model in enumerate(models):
        for column, metric in enumerate(metrics):
            axis = axes[row][column]
            for order, curve in backfill[backfill.model == model].groupby("order", sort=False):
                axis.plot(curve.share * 100, curve[metric] * 100, marker="o", label=f"{order} (area {curve_area(curve, metric):.3f})")
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
             "| model | parent | verdict | route | top-1 | parent top-1 | mAP | parent mAP |", "|---|---|---|---|---|---|---|---|"]
    for v in verdicts:
        numbers = " | ".join(_value(v.numbers, key) for key in ("top1", "parent_top1", "map", "parent_map"))
        lines.append(f"| {v.model} | {v.parent} | **{v.decision}** | {v.route} | {numbers} |")
    lines += ["", "Share of the gallery to re-encode before the new model's queries beat the parent's own "
              "numbers on every metric (from the backfill curves; - when no share does):", ""]
    for v in verdicts:
        shares = [f"{key.split('/', 1)[1]} {value:.2f}" if value == value else f"{key.split('/', 1)[1]} -"
                  for key, value in v.numbers.items() if key.startswith("share_to_beat_parent/")]
        lines.append(f"- {v.model}: {', '.join(shares)}")
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
    lines += [f"| {a['model']} | {a['order']} | {_value(a, 'area_top1')} | {_value(a, 'area_map')} |" for a in _areas(backfill)]
    return "\n".join(lines) + "\n"


def _value(numbers: dict, key: str) -> str:
    return f"{numbers[key]:.4f}" if key in numbers else "-"


def _write_files(table: pd.DataFrame, summary: pd.DataFrame, backfill: pd.DataFrame, verdicts: list[Verdict],
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


def _log_to_mlflow(table: pd.DataFrame, summary: pd.DataFrame, backfill: pd.DataFrame, verdicts: list[Verdict],
                   gains: dict[str, float], files: list[Path], order: list[str], tracking_uri: str, experiment: str,
                   params: dict[str, str]) -> str:
    client = MlflowClient(tracking_uri)
    experiment_key = experiment_id(tracking_uri, experiment)
    parent = client.create_run(experiment_key, run_name=f"lineage {' -> '.join(order)}", tags={"kind": "lineage-report"})
    run_id = parent.info.run_id
    with finished_run(client, run_id):
        _log_report_run(client, run_id, experiment_key, table, summary, backfill, verdicts, gains, files, params)
    return run_id


def _log_report_run(client: MlflowClient, run_id: str, experiment_key: str, table: pd.DataFrame, summary: pd.DataFrame,
                    backfill: pd.DataFrame, verdicts: list[Verdict], gains: dict[str, float], files: list[Path],
                    params: dict[str, str]) -> None:
    client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])
    metrics = cell_metrics(table)
    metrics.update({f"{kind}_{r.metric}": float(getattr(r, kind)) for r in summary.itertuples() for kind in ("AC", "AM")
                    if not np.isnan(getattr(r, kind))})
    metrics.update({k: v for k, v in gains.items() if not np.isnan(v)})
    for area in _areas(backfill):
        for m in (m for m in BACKFILL_METRICS if f"area_{m}" in area):
            metrics[metric_key("backfill_area", m, area["model"], area["order"])] = area[f"area_{m}"]
    for v in verdicts:
        metrics.update({metric_key(key, v.model): value for key, value in v.numbers.items()
                        if key.startswith("share_to_beat_parent/") and not np.isnan(value)})
    log_metrics(client, run_id, metrics)
    for v in verdicts:
        client.set_tag(run_id, f"verdict/{v.model}", v.decision)
        client.set_tag(run_id, f"verdict_route/{v.model}", v.route)
    for row in table.to_dict("records"):
        pair = client.create_run(experiment_key, run_name=f"{row['query_model']} -> {row['gallery_model']}",
                                 tags={"mlflow.parentRunId": run_id, "kind": "model-pair"})
        with finished_run(client, pair.info.run_id):
            client.log_batch(pair.info.run_id, params=[Param("query_model", row["query_model"]),
                                                       Param("gallery_model", row["gallery_model"]),
                                                       Param("transform", row["transform"])])
            log_metrics(client, pair.info.run_id, row_metrics(row))
            compatible = pair_compatible(row)
            if compatible is not None:
                client.set_tag(pair.info.run_id, "compatible", str(compatible).lower())
    for path in files:
        client.log_artifact(run_id, str(path))


def report_registered_lineage(context: RunContext, registered_model: str, versions: list[str] | None,
                              dataset: str | Path, out_dir: str | Path, **options: Any) -> LineageReport:
    """``run_lineage_report`` over the registry's chain of versions (``pipeline.lineage.registry``), each
    version's artifact downloaded to ``out_dir/models/v<version>`` and named ``v<version>``."""
    tracking_uri = context.tracking_uri
    chain = registered_chain(tracking_uri, registered_model, versions)
    models = [LineageModel(f"v{v.version}", download_version(tracking_uri, v, Path(out_dir) / "models" / f"v{v.version}"),
                           f"v{v.parent}" if i else None) for i, v in enumerate(chain)]
    return run_lineage_report(models, dataset, out_dir, context, registered_model=registered_model, **options)
