"""MLflow helpers: experiments with a known artifact root that open in MLflow 3's model-training
view, runs with a one-line description and their datasets as inputs, and safe metric names."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from pipeline.errors import TrackingUnreachable, preempted

T = TypeVar("T")
_METRIC_UNSAFE = re.compile(r"[^A-Za-z0-9_\-./ ]")
# The experiment's kind for MLflow's own use; MLflow 3.17's UI picks its view by the link (ui_link).
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


def concurrent_writes(write: Callable[[], T], what: str, tries: int = 5) -> T:
    """``write()``, tried again when it fails because a concurrent writer made the same row first:
    MLflow's stores look a row up, then insert it, in two steps, so that two fits starting at once
    on one store (a SQLite file, or a server's database) can both miss it and the second insert
    fails (``UNIQUE constraint failed``, ``RESOURCE_ALREADY_EXISTS``). ``write`` must then find the
    row the first writer made (get-or-create, MLflow's deduplicating ``log_inputs``)."""
    from mlflow.exceptions import MlflowException

    for attempt in range(1, tries + 1):
        try:
            return write()
        except MlflowException as error:
            if attempt == tries or not _conflict(error):
                raise
            logging.getLogger(__name__).info("MLflow: %s met a concurrent writer (%s); trying again", what,
                                             str(error).splitlines()[0][:120])
            time.sleep(0.05 * attempt)
    raise AssertionError("unreachable")


def _conflict(error: Exception) -> bool:
    """Whether an MLflow error is a row another writer inserted first."""
    text = str(error)
    return getattr(error, "error_code", "") == "RESOURCE_ALREADY_EXISTS" or any(
        sign in text for sign in ("UNIQUE constraint failed", "IntegrityError", "duplicate key", "Duplicate entry",
                                  "already exists"))


def experiment_id(tracking_uri: str, name: str) -> str:
    """The id of experiment ``name``, created when missing (by whichever of several writers gets
    there first); either way of the model-training kind."""
    client = MlflowClient(tracking_uri)

    def get_or_create() -> str:
        found = client.get_experiment_by_name(name)
        if found is None:
            return client.create_experiment(name, artifact_location=local_artifact_root(tracking_uri),
                                            tags=dict([EXPERIMENT_KIND]))
        if found.tags.get(EXPERIMENT_KIND[0]) is None:  # created by an earlier version, or by Ray Tune's callback
            client.set_experiment_tag(found.experiment_id, *EXPERIMENT_KIND)
        return found.experiment_id

    return concurrent_writes(get_or_create, f"experiment {name!r}")


def ui_link(server: str, experiment: str, run_id: str | None = None) -> str:
    """The MLflow UI's page of an experiment (its runs table) or of one run, in the model-training
    view: MLflow 3.17's UI picks the view by its workflow type (this link's ``workflowType``, else
    the browser's last choice, GenAI at first), not by the experiment's kind tag."""
    page = f"{server.rstrip('/')}/#/experiments/{experiment}" + (f"/runs/{run_id}" if run_id else "")
    return f"{page}?workflowType=machine_learning"


def log_dataset(client: MlflowClient, run_id: str, folder: str | Path, name: str, context: str) -> None:
    """``folder`` (a dataset or embeddings folder, or one file) as an MLflow input of the run, named ``name``, in
    ``context`` ("training", "scoring"): the runs table's Dataset column. Its digest hashes the
    folder's file names and sizes, so that a rewritten dataset shows as another one. Runs that
    log the same dataset at once all get it (``concurrent_writes``)."""
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    folder = Path(folder).resolve()
    paths = [folder] if folder.is_file() else [path for path in folder.rglob("*") if path.is_file()]
    files = sorted((str(path.relative_to(folder.parent)), path.stat().st_size) for path in paths)
    digest = hashlib.sha256(json.dumps(files).encode()).hexdigest()[:12]
    dataset = Dataset(name=name, digest=digest, source_type="local", source=json.dumps({"uri": folder.as_uri()}))
    inputs = [DatasetInput(dataset, tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])]
    concurrent_writes(lambda: client.log_inputs(run_id, datasets=inputs), f"dataset input {name!r}")


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
    """A training worker's MLflow logging into the run its driver opened (rank 0 only).

    An epoch the tracking server does not take (down, unreachable) is kept in ``pending``, which
    each checkpoint carries: it goes with the next epoch that reaches the server, or with a rerun
    that resumes the checkpoint. A call gives up after about ten seconds, not MLflow's minutes of
    retries, so that training goes on meanwhile."""

    def __init__(self, tracking_uri: str, run_id: str | None, params: dict[str, Any],
                 pending: list[dict[str, Any]] | None = None) -> None:
        self.tracking_uri, self.run_id, self.params = tracking_uri, run_id, params
        self.pending = list(pending or [])  # [{"epoch", "time", "metrics"}], oldest first
        self.client = MlflowClient(tracking_uri) if run_id else None
        for variable, value in (("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2"), ("MLFLOW_HTTP_REQUEST_TIMEOUT", "5"),
                                ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")):
            os.environ.setdefault(variable, value)  # this worker process's MLflow calls only
        self._params_logged = False
        self.flush()

    def log_epoch(self, metrics: dict[str, float], epoch: int) -> None:
        self.pending.append({"epoch": epoch, "time": int(time.time() * 1000),
                             "metrics": {key: float(value) for key, value in metrics.items() if key != "epoch"}})
        self.flush()

    def flush(self) -> None:
        """Send the params (once) and every pending epoch, oldest first; what does not go stays pending."""
        from mlflow.entities import Metric, Param

        if not self.client:
            self.pending.clear()
            return
        try:
            if not self._params_logged:
                self.client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in self.params.items()])
                self._params_logged = True
            while self.pending:
                entry = self.pending[0]
                self.client.log_batch(self.run_id, metrics=[Metric(key, value, entry["time"], entry["epoch"])
                                                            for key, value in entry["metrics"].items()])
                self.pending.pop(0)
        except Exception as error:  # MlflowException, requests' connection errors: whatever the server is doing
            epochs = [entry["epoch"] for entry in self.pending]
            logging.getLogger(__name__).warning(
                "MLflow at %s did not take the metrics of epochs %s (%s): kept, with the checkpoint, for later",
                self.tracking_uri, epochs, type(error).__name__)


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


def server_answers(tracking_uri: str) -> bool:
    """Whether the tracking server at ``tracking_uri`` answers its health check (a local store: always)."""
    if not tracking_uri.startswith(("http://", "https://")):
        return True
    import urllib.request

    try:
        with urllib.request.urlopen(f"{tracking_uri.rstrip('/')}/health", timeout=5):
            return True
    except OSError:
        return False


@contextmanager
def reaching(tracking_uri: str, kept: str) -> Iterator[None]:
    """MLflow calls of the block, when the server answers (asked first: MLflow's own retries of a
    call wait minutes); when it does not, before or during the block, one ``TrackingUnreachable``
    naming ``tracking_uri`` and ``kept`` (what stays for a rerun)."""
    if not server_answers(tracking_uri):
        raise TrackingUnreachable(f"MLflow at {tracking_uri} does not answer; {kept}")
    try:
        yield
    except Exception as error:
        if server_answers(tracking_uri):
            raise
        raise TrackingUnreachable(f"MLflow at {tracking_uri} does not answer ({type(error).__name__}); {kept}") \
            from None


@contextmanager
def finished_run(client: MlflowClient, run_id: str) -> Iterator[None]:
    """Mark ``run_id`` FINISHED when the block completes, FAILED when it raises (then re-raise);
    left RUNNING when the server does not answer or the job was stopped (SIGTERM), so that a rerun
    continues it."""
    try:
        yield
    except BaseException as error:
        if not isinstance(error, TrackingUnreachable) and not preempted(error):  # else: to be continued
            client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id)
