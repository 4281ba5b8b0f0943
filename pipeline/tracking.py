"""MLflow helpers: experiments with a known artifact root that open in MLflow 3's model-training
view, runs with a one-line description and their datasets as inputs, and safe metric names."""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

_METRIC_UNSAFE = re.compile(r"[^A-Za-z0-9_\-./ ]")
# MLflow 3 opens an experiment on the view its kind names; without it, on the GenAI overview.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
DESCRIPTION_TAG = "mlflow.note.content"  # the run page's Description (Markdown)


def metric_key(*parts: str) -> str:
    """An MLflow metric name from parts joined by '/'; characters MLflow refuses ('@') become '_'."""
    return _METRIC_UNSAFE.sub("_", "/".join(parts))


def local_artifact_root(tracking_uri: str) -> str | None:
    """For a SQLite store, artifacts go next to the database; a server decides for itself."""
    if tracking_uri.startswith("sqlite:///"):
        return (Path(tracking_uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
    return None


def experiment_id(tracking_uri: str, name: str) -> str:
    """The id of experiment ``name``, created when missing; either way of the model-training kind."""
    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(name)
    if found is None:
        return client.create_experiment(name, artifact_location=local_artifact_root(tracking_uri),
                                        tags=dict([EXPERIMENT_KIND]))
    if found.tags.get(EXPERIMENT_KIND[0]) is None:  # created by an earlier version, or by Ray Tune's callback
        client.set_experiment_tag(found.experiment_id, *EXPERIMENT_KIND)
    return found.experiment_id


def ui_link(server: str, experiment: str, run_id: str | None = None) -> str:
    """The MLflow UI's page of an experiment (its runs table) or of one run, in the model-training
    view: MLflow 3.17's UI picks the view by its workflow type (this link's ``workflowType``, else
    the browser's last choice, GenAI at first), not by the experiment's kind tag."""
    page = f"{server.rstrip('/')}/#/experiments/{experiment}" + (f"/runs/{run_id}" if run_id else "")
    return f"{page}?workflowType=machine_learning"


def log_dataset(client: MlflowClient, run_id: str, folder: str | Path, name: str, context: str) -> None:
    """``folder`` (a dataset or embeddings folder, or one file) as an MLflow input of the run, named ``name``, in
    ``context`` ("training", "scoring"): the runs table's Dataset column. Its digest hashes the
    folder's file names and sizes, so that a rewritten dataset shows as another one."""
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    folder = Path(folder).resolve()
    paths = [folder] if folder.is_file() else [path for path in folder.rglob("*") if path.is_file()]
    files = sorted((str(path.relative_to(folder.parent)), path.stat().st_size) for path in paths)
    digest = hashlib.sha256(json.dumps(files).encode()).hexdigest()[:12]
    dataset = Dataset(name=name, digest=digest, source_type="local", source=json.dumps({"uri": folder.as_uri()}))
    client.log_inputs(run_id, datasets=[DatasetInput(dataset, tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])])


def flat_params(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as MLflow params: ``{"compat": {"lambda_align": 1}}`` -> ``compat.lambda_align``."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flat_params(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


class EpochLogger:
    """A training worker's MLflow logging into the run its driver opened (rank 0 only)."""

    def __init__(self, tracking_uri: str, run_id: str | None, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        self.run_id = run_id
        self.client = MlflowClient(tracking_uri) if run_id else None
        if self.client:
            self.client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])

    def log_epoch(self, metrics: dict[str, float], epoch: int) -> None:
        from mlflow.entities import Metric

        if self.client:
            now = int(time.time() * 1000)
            self.client.log_batch(self.run_id, metrics=[Metric(key, float(value), now, epoch)
                                                        for key, value in metrics.items() if key != "epoch"])


def resumable_run(client: MlflowClient, tracking_uri: str, experiment: str, run_name: str,
                  tags: dict[str, str]) -> Run:
    """The run of ``experiment`` with the same ``tags["ray_run"]`` (the Ray Train run it logs)
    that never finished (its driver died), to be continued; else a new run with ``tags``."""
    experiment_key = experiment_id(tracking_uri, experiment)
    query = "tags.ray_run = '{}'".format(tags["ray_run"].replace("'", "\\'"))
    for run in client.search_runs([experiment_key], filter_string=query, order_by=["attributes.start_time DESC"],
                                  max_results=1):
        if run.info.status == "RUNNING":
            return run
    return client.create_run(experiment_key, run_name=run_name, tags=tags)


@contextmanager
def finished_run(client: MlflowClient, run_id: str) -> Iterator[None]:
    """Mark ``run_id`` FINISHED when the block completes, FAILED when it raises (then re-raise)."""
    try:
        yield
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id)
