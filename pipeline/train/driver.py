"""The one Ray Train driver of every fit: compatible training (``pipeline.train.training``) and
cross-model compatibility (``pipeline.train.cross_model``) alike.

A fit is a ``FitJob``: its config (``pipeline.config.FitConfig``: resources, retries, precision),
the function its workers run (``pipeline.train.loop`` holds their shared epoch loop) and what
every worker reads. ``run_fit`` opens the MLflow run, or continues the one a dead driver left
RUNNING, runs the ``TorchTrainer`` with ``FailureConfig`` and checkpoints, turns a worker's bad
data or non-finite loss into one line naming the last good checkpoint, and lets the caller write
the artifact from the result before the run is marked finished.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import ray
import ray.data
import ray.train
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train import DataConfig as RayDataConfig  # not pipeline.config.DataConfig (the dataset's source)
from ray.train.torch import TorchConfig, TorchTrainer

from pipeline.atomic import one_writer
from pipeline.compat.steps import NonFiniteLoss
from pipeline.config import SCHEDULING_FIELDS, FitConfig, RunContext
from pipeline.model.card import read_card
from pipeline.runtime import exit_on_sigterm, runs_at_once
from pipeline.tracking import finished_run, log_dataset, reaching, resumable_run
from pipeline.train.loop import RunRecord

log = logging.getLogger(__name__)


class WorkerInputs(Protocol):
    """What every worker of one fit reads: one frozen object per kind of fit
    (``training.TrainInputs``, ``cross_model.CmcInputs``), with the run's record."""

    record: RunRecord


@dataclass(frozen=True)
class FitJob:
    """One fit as the driver runs it."""

    cfg: FitConfig
    worker: Callable[[Any], None]  # one Ray Train worker's whole fit, given ``inputs``
    inputs: WorkerInputs           # what every worker reads
    tags: dict[str, str] = field(default_factory=dict)  # the MLflow run's tags ("kind", "method", ...)
    # Ray Data streams split among the workers (ray.train.get_dataset_shard), each built when the
    # worker group starts (a callable: a restarted group gets a fresh stream)
    datasets: dict[str, Callable[[], ray.data.Dataset]] = field(default_factory=dict)
    dataset: str | None = None  # the dataset folder the fit reads: the MLflow run's training input


def config_hash(config: FitConfig, inputs: dict[str, Any]) -> str:
    """What a checkpoint may be resumed under: the fit's config (its scheduling fields aside, which
    a rerun may change) and the inputs it reads."""
    hashed = {"config": {k: v for k, v in config.model_dump().items() if k not in SCHEDULING_FIELDS}, **inputs}
    return hashlib.sha256(json.dumps(hashed, sort_keys=True).encode()).hexdigest()


def uses_gpu(cfg: FitConfig) -> bool:
    """``cfg.use_gpu``, or when unset whether the cluster has GPUs."""
    return cfg.use_gpu if cfg.use_gpu is not None else ray.cluster_resources().get("GPU", 0) > 0


def run_resources(cfg: FitConfig) -> dict[str, float]:
    """What one run of ``cfg`` holds while it runs: its CPUs (``FitConfig.reserved_cpus``) and its workers' GPUs."""
    return {"CPU": cfg.reserved_cpus, "GPU": cfg.num_workers if uses_gpu(cfg) else 0}


def fits_at_once(fits: Sequence[FitConfig], limit: int | None = None) -> int:
    """How many of ``fits`` the cluster holds side by side, each counted as the largest of them
    (``pipeline.runtime.runs_at_once``), at most ``limit``."""
    per_run = {key: max((run_resources(fit)[key] for fit in fits), default=0) for key in ("CPU", "GPU")}
    return runs_at_once(per_run, limit)


def storage_location(storage_path: str | Path) -> str:
    """Ray Train's storage: a URI (``s3://``, ``gs://``, ...) as given, a local or NFS folder made
    absolute (every node must see it: on a cluster, shared storage)."""
    text = str(storage_path)
    return text if "://" in text else str(Path(text).resolve())


def run_lock(storage: str, run_name: str) -> AbstractContextManager:
    """One job at a time per Ray Train run: the writer lock of its folder on a local or NFS
    storage (``one_writer``); none on object storage, which has no locks."""
    return nullcontext() if "://" in storage else one_writer(Path(storage) / run_name)


def build_trainer(job: FitJob, storage: str, run_name: str, callbacks: list | None = None) -> TorchTrainer:
    """The ``TorchTrainer`` of one run: workers, backend, storage, checkpoints, retries."""
    cfg, use_gpu = job.cfg, uses_gpu(job.cfg)
    log.info("fit %s: %s (%d workers, gpu=%s, run %s/%s)", cfg.name, job.tags.get("method", ""), cfg.num_workers,
             use_gpu, storage, run_name)
    return TorchTrainer(
        functools.partial(job.worker, job.inputs),
        datasets=job.datasets or None,
        dataset_config=ordered_ingest() if job.datasets else None,
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": cfg.cpus_per_worker},
                                     placement_strategy=cfg.placement_strategy),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=RunConfig(name=run_name, storage_path=storage, checkpoint_config=CheckpointConfig(num_to_keep=2),
                             failure_config=FailureConfig(max_failures=cfg.max_failures), callbacks=callbacks),
    )


def ordered_ingest() -> RayDataConfig:
    """Ray Train's default ingest options with the order kept: with one worker, a stream's
    batches are the same in every rerun of a seed."""
    options = RayDataConfig.default_ingest_options()
    options.preserve_order = True
    return RayDataConfig(execution_options=options)


class TrainingStopped(ValueError):
    """A run stopped on a worker by bad input or a non-finite loss; its last good checkpoint stays."""


def stopped_training(error: ray.train.WorkerGroupError, run_path: str) -> Exception:
    """A worker's known error (bad data, a non-finite loss) as one message that names the run's
    last good checkpoint; any other failure as it was."""
    known = [failure for failure in error.worker_failures.values() if isinstance(failure, (ValueError, NonFiniteLoss))]
    if not known:
        return error
    try:
        checkpoint = ray.train.Result.from_path(run_path).checkpoint
    except RuntimeError:  # Ray Train's: the run stopped before it recorded anything to restore
        checkpoint = None
    kept = f"the last good checkpoint stays in {checkpoint.path}" if checkpoint else "no checkpoint was saved"
    return TrainingStopped(f"{known[0]} ({kept}; no artifact written)")


def run_fit(job: FitJob, context: RunContext, run_name: str | None,
            write: Callable[[ray.train.Result, str], Path], artifact_path: str) -> Path:
    """Fit ``job`` and write its artifact folder with ``write(result, mlflow_run_id)``, logged
    under ``artifact_path`` of the MLflow run, which is tagged with the artifact's id.

    ``run_name`` names the Ray Train run under the context's storage (default: the config's name);
    fitting again under the same name continues that run from its last checkpoint, and its MLflow
    run if that never finished (a driver that died), so no reported epoch is lost. Workers that
    die are replaced up to ``max_failures`` times, resuming from the last checkpoint. A second
    job fitting the same run at once is refused (``run_lock``).
    """
    from mlflow.tracking import MlflowClient

    storage, run_name = storage_location(context.storage_path), run_name or job.cfg.name
    client = MlflowClient(context.tracking_uri)
    with reaching(context.tracking_uri, "nothing was trained: run again once it is back"):
        run = resumable_run(client, context.tracking_uri, context.experiment, job.cfg.name,
                            {**job.tags, "ray_run": f"{storage}/{run_name}"})
        if job.dataset:  # a resumed run's input is logged again, which MLflow keeps once
            log_dataset(client, run.info.run_id, job.dataset, Path(job.dataset).name, "training")
    record = replace(job.inputs.record, tracking_uri=context.tracking_uri, mlflow_run_id=run.info.run_id)
    trainer = build_trainer(replace(job, inputs=replace(job.inputs, record=record)), storage, run_name)
    with run_lock(storage, run_name), finished_run(client, run.info.run_id):
        try:
            with exit_on_sigterm():
                result = trainer.fit()
        except ray.train.WorkerGroupError as error:
            raise stopped_training(error, f"{storage}/{run_name}") from None
        folder = write(result, run.info.run_id)
        with reaching(context.tracking_uri, f"the fit finished and its checkpoint is kept in {storage}/{run_name}: "
                                            "the same command, once the server is back, logs the epochs it missed "
                                            "and the artifact"):
            client.log_artifacts(run.info.run_id, str(folder), artifact_path=artifact_path)
            client.set_tag(run.info.run_id, "model_id", read_card(folder).id)
    log.info("fit %s: artifact written to %s", job.cfg.name, folder)
    return folder
