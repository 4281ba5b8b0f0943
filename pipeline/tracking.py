"""MLflow helpers: experiments with a known artifact root, and safe metric names."""

from __future__ import annotations

import re
from pathlib import Path

from mlflow.tracking import MlflowClient

_METRIC_UNSAFE = re.compile(r"[^A-Za-z0-9_\-./ ]")


def metric_key(*parts: str) -> str:
    """An MLflow metric name from parts joined by '/'; characters MLflow refuses ('@') become '_'."""
    return _METRIC_UNSAFE.sub("_", "/".join(parts))


def local_artifact_root(tracking_uri: str) -> str | None:
    """For a SQLite store, artifacts go next to the database; a server decides for itself."""
    if tracking_uri.startswith("sqlite:///"):
        return (Path(tracking_uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
    return None


def experiment_id(tracking_uri: str, name: str) -> str:
    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    return client.create_experiment(name, artifact_location=local_artifact_root(tracking_uri))
