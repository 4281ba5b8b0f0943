"""Writing the compatibility report: Parquet/CSV table, heat map, text matrix, MLflow run."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from mlflow.entities import Metric, Param  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from pipeline.atomic import write_atomic  # noqa: E402
from pipeline.score.matrix import CRITERION_METRICS, matrix  # noqa: E402
from pipeline.tracking import experiment_id, metric_key  # noqa: E402

HEATMAP_METRICS = ("top1", "map")


def write_tables(table: pd.DataFrame, out_dir: str | Path) -> dict[str, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"parquet": out_dir / "report.parquet", "csv": out_dir / "report.csv"}
    write_atomic(paths["parquet"], lambda temporary: table.to_parquet(temporary, index=False))
    write_atomic(paths["csv"], lambda temporary: table.to_csv(temporary, index=False))
    return paths


def _matrix_panel(figure: plt.Figure, axis: plt.Axes, values: np.ndarray, order: list[str], title: str) -> None:
    """One matrix as a colour grid with its numbers printed in the cells (values in %)."""
    image = axis.imshow(values, cmap="viridis", vmin=0, vmax=100)
    axis.set_xticks(range(len(order)), order, rotation=30, ha="right")
    axis.set_yticks(range(len(order)), order)
    axis.set_xlabel("gallery model")
    axis.set_ylabel("query model")
    axis.set_title(title)
    for i in range(len(order)):
        for j in range(len(order)):
            axis.text(j, i, "-" if np.isnan(values[i, j]) else f"{values[i, j]:.1f}", ha="center", va="center",
                      color="white" if values[i, j] < 60 else "black", fontsize=9)
    figure.colorbar(image, ax=axis, fraction=0.046)


def heatmap(table: pd.DataFrame, order: list[str], path: str | Path,
            metrics: tuple[str, ...] = HEATMAP_METRICS, titles: dict[str, str] | None = None) -> Path:
    """One panel per metric: rows = query model, columns = gallery model, values in the cells."""
    size = 2.5 + 0.9 * len(order)
    figure, axes = plt.subplots(1, len(metrics), figsize=(size * len(metrics), size - 0.8), squeeze=False)
    for axis, metric in zip(axes[0], metrics):
        _matrix_panel(figure, axis, matrix(table, metric, order).to_numpy() * 100, order,
                      (titles or {}).get(metric, f"{metric} (%)"))
    figure.tight_layout()
    write_atomic(path, lambda temporary: figure.savefig(temporary, dpi=120, format="png"))
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
            if column.startswith(("top", "map", "update_gain", "ivf_")) and isinstance(value, float)
            and not math.isnan(value)}


def cell_metrics(table: pd.DataFrame) -> dict[str, float]:
    """Every row's metrics as ``<metric>/<query>/<gallery>``."""
    return {metric_key(column, row["query_model"], row["gallery_model"]): value
            for row in table.to_dict("records") for column, value in row_metrics(row).items()}


def pair_compatible(row: dict) -> bool | None:
    """The criterion of one report row on every criterion metric scored (top-1, and mAP with the
    full ranking); None on the diagonal or where the reference was not scored."""
    verdicts = [row[f"compatible_{m}"] for m in CRITERION_METRICS if f"compatible_{m}" in row]
    if row["query_model"] == row["gallery_model"] or not verdicts or any(pd.isna(v) for v in verdicts):
        return None
    return all(bool(v) for v in verdicts)


def log_metrics(client: MlflowClient, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    """Metrics in batches of at most 900 (MLflow's limit per call is 1000)."""
    items = [Metric(key, value, 0, step) for key, value in metrics.items()]
    for start in range(0, len(items), 900):
        client.log_batch(run_id, metrics=items[start : start + 900])


def log_report(table: pd.DataFrame, order: list[str], files: list[Path], tracking_uri: str, experiment: str,
               run_name: str = "compatibility-matrix") -> str:
    """One MLflow run: each cell a metric ``<metric>/<query>/<gallery>``, verdicts as tags, files as artifacts."""
    client = MlflowClient(tracking_uri)
    run = client.create_run(experiment_id(tracking_uri, experiment), run_name=run_name, tags={"kind": "score"})
    run_id = run.info.run_id
    log_metrics(client, run_id, cell_metrics(table))
    client.log_batch(run_id, params=[Param("models", ",".join(order))])
    for row in table.to_dict("records"):
        compatible = pair_compatible(row)
        if compatible is not None:
            client.set_tag(run_id, f"compatible/{row['query_model']}/{row['gallery_model']}", str(compatible).lower())
    for path in files:
        client.log_artifact(run_id, str(path))
    client.set_terminated(run_id)
    return run_id
