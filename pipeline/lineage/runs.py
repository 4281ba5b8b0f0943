"""The lineage report in MLflow: one run per report (params, every cell as a metric
``<metric>/<query>/<gallery>``, AC/AM, gains and backfill areas as metrics, verdicts as tags, the
files as artifacts) and under it one nested run per model pair with params ``query_model``,
``gallery_model``, ``transform`` and the pair's metrics, so the MLflow UI's run table lists,
sorts and compares pairs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.entities import Param
from mlflow.tracking import MlflowClient

from pipeline.config import RunContext
from pipeline.lineage.files import backfill_areas
from pipeline.lineage.measures import LineageMeasures
from pipeline.score import CRITERION_METRICS, cell_metrics, log_metrics, row_metrics
from pipeline.tracking import DESCRIPTION_TAG, experiment_id, finished_run, metric_key


def log_lineage_report(measures: LineageMeasures, files: list[Path], context: RunContext,
                       params: dict[str, str]) -> str:
    """The report's MLflow run and its nested pair runs; the run's id."""
    client, order = MlflowClient(context.tracking_uri), measures.order
    experiment_key = experiment_id(context.tracking_uri, context.experiment)
    parent = client.create_run(experiment_key, run_name=f"lineage {' -> '.join(order)}",
                               tags={"kind": "lineage-report",
                                     DESCRIPTION_TAG: f"Lineage report of {' -> '.join(order)}: matrix, AC/AM, backfill "
                                                      f"curves and each version's verdict (summary.md)"})
    run_id = parent.info.run_id
    with finished_run(client, run_id):
        _log_runs(client, run_id, experiment_key, measures, files, params)
    return run_id


def _log_runs(client: MlflowClient, run_id: str, experiment_key: str, measures: LineageMeasures, files: list[Path],
              params: dict[str, str]) -> None:
    table, summary, verdicts, indexes = measures.table, measures.summary, measures.verdicts, measures.indexes
    client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])
    metrics = cell_metrics(table)
    metrics.update({f"{kind}_{r.metric}": float(getattr(r, kind)) for r in summary.itertuples() for kind in ("AC", "AM")
                    if not np.isnan(getattr(r, kind))})
    metrics.update({k: v for k, v in measures.gains.items() if not np.isnan(v)})
    for area in backfill_areas(measures.backfill):
        for m in (m for m in CRITERION_METRICS if f"area_{m}" in area):
            metrics[metric_key("backfill_area", m, area["model"], area["order"])] = area[f"area_{m}"]
    for v in verdicts:
        metrics.update({metric_key(key, v.model): value for key, value in v.numbers.items()
                        if key.startswith(("share_to_beat_parent/", "share_for_95pct_gain/")) and not np.isnan(value)})
    log_metrics(client, run_id, metrics)
    for share, rows in (indexes.groupby("share") if len(indexes) else ()):  # a curve per index, step: % re-encoded
        log_metrics(client, run_id, {metric_key("index_recall_at_k", r.model, r.index, r.trained_on): r.recall_at_k
                                     for r in rows.itertuples()}, step=int(round(share * 100)))
    for v in verdicts:
        client.set_tag(run_id, f"decision/{v.model}", str(v.decision))
        client.set_tag(run_id, f"verdict/{v.model}", v.statement)
        client.set_tag(run_id, f"verdict_route/{v.model}", v.route)
    for row in table.to_dict("records"):
        pair = client.create_run(experiment_key, run_name=f"{row['query_model']} -> {row['gallery_model']}",
                                 tags={"mlflow.parentRunId": run_id, "kind": "model-pair",
                                       DESCRIPTION_TAG: f"{row['query_model']}'s queries searched in "
                                                        f"{row['gallery_model']}'s gallery"})
        with finished_run(client, pair.info.run_id):
            client.log_batch(pair.info.run_id, params=[Param("query_model", row["query_model"]),
                                                       Param("gallery_model", row["gallery_model"]),
                                                       Param("transform", row["transform"])])
            log_metrics(client, pair.info.run_id, row_metrics(row))
            if not pd.isna(row.get("decision")):
                client.set_tag(pair.info.run_id, "decision", row["decision"])
    for path in files:
        client.log_artifact(run_id, str(path))
