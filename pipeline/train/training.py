"""Compatible training on Ray Train: the per-worker loop and the driver that fits it.

The loop reads top to bottom: data shard, model, objective, resume, epochs. Every worker
reports once per epoch; rank 0 alone saves the checkpoint and logs to MLflow. The driver turns
the final checkpoint into a model artifact (weights + card).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
import zlib
from pathlib import Path
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from pipeline.compat.losses import check_same_dim, influence_weights
from pipeline.compat.methods import Method
from pipeline.compat.objectives import TrainingObjective
from pipeline.compat.statistics import OldSpaceStats
from pipeline.compat.steps import NonFiniteLoss, autocast, autocast_dtype, optimizer_and_schedule, optimizer_step
from pipeline.config import TrainConfig
from pipeline.data.dataset import class_indices, read_dataset_info
from pipeline.data.decode import load_split
from pipeline.model.artifacts import load_model, new_model_id, read_model_card, write_artifact
from pipeline.model.card import ModelCard
from pipeline.model.heads import build_head
from pipeline.model.networks import EmbeddingModel
from pipeline.model.transformations import build_transforms
from pipeline.tracking import EpochLogger, finished_run, flat_params, resumable_run
from pipeline.train.checkpoints import final_weights, report_epoch, resume
from pipeline.train.validation import References, Validator

log = logging.getLogger(__name__)


def _old_head(old_model_dir: str, stats: OldSpaceStats, new_dim: int) -> torch.nn.Module:
    """Model 1's classifier, frozen, with pseudo rows for the classes it never saw (BCT)."""
    old_model, old_card = load_model(old_model_dir)
    check_same_dim(new_dim, old_card.embedding_dim, f"BCT against {old_model_dir}")
    head = build_head(old_card.model.head, new_dim, len(stats.classes))
    with torch.no_grad():
        head.weight.copy_(influence_weights(stats, old_model.head.weight, old_card.classes))
    return head


def build_objective(cfg: TrainConfig, method: Method, classes: list[str], stats_path: str | None,
                    old_model_dir: str | None) -> TrainingObjective:
    """``method``'s objective with what it needs: the statistics (checked against the label map),
    the old classifier, the old embedder; a method that compares the two spaces as they are
    needs one dimension."""
    if not method.needs_old_model:
        return TrainingObjective(method, cfg.compat)
    if old_model_dir is None or (method.needs_statistics and stats_path is None):
        needed = "an old model and its statistics" if method.needs_statistics else "an old model"
        raise ValueError(f"model {cfg.name!r}: method {method.name!r} needs {needed}")
    stats = None
    if method.needs_statistics:
        stats = OldSpaceStats.load(stats_path)
        stats.check_label_map(classes, source=stats_path)
        if method.compares_spaces_directly:
            check_same_dim(cfg.model.embedding_dim, stats.dim, f"model {cfg.name!r} against statistics {stats_path}")
    elif method.compares_spaces_directly:
        check_same_dim(cfg.model.embedding_dim, read_model_card(old_model_dir).embedding_dim,
                       f"model {cfg.name!r} against the old model {old_model_dir}")
    old_head = _old_head(old_model_dir, stats, cfg.model.embedding_dim) if method.needs_old_classifier else None
    old_embedder = load_model(old_model_dir)[0].embedder if method.needs_old_forward else None
    return TrainingObjective(method, cfg.compat, stats, old_head, old_embedder)


def init_seed(cfg: TrainConfig) -> int:
    """The weight-initialisation seed: the config's seed mixed with the model's name, so that two
    models (an old one and an independent new one) never start from the same weights by accident,
    which would make them look compatible."""
    return cfg.seed * 1_000_003 + zlib.crc32(cfg.name.encode())


def passes_per_epoch(cfg: TrainConfig, batches_per_pass: int) -> int:
    """Passes over the shard in one epoch: 1, or more so that a small dataset still gets
    ``cfg.min_steps`` steps in ``cfg.epochs`` epochs (and as many checkpoints, not hundreds)."""
    return max(1, math.ceil(cfg.min_steps / (cfg.epochs * batches_per_pass)))


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """One Ray Train worker: fit ``EmbeddingModel`` on its shard of the training split."""
    cfg = TrainConfig.model_validate(loop_config["train"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(max(1, int(cfg.cpus_per_worker)))
    torch.manual_seed(init_seed(cfg))

    info = read_dataset_info(loop_config["dataset"])
    labels_kept = class_indices(info.classes, cfg.classes)
    classes = [info.classes[i] for i in labels_kept]
    ids, images, dataset_labels = load_split(loop_config["dataset"], "train", labels_kept, cfg.data_fraction,
                                             cfg.seed, shard=(rank, world), validation_fraction=cfg.validation_fraction)
    to_model_label = {dataset_label: index for index, dataset_label in enumerate(labels_kept)}
    images = torch.from_numpy(images)
    labels = torch.tensor([to_model_label[int(y)] for y in dataset_labels])

    device = ray.train.torch.get_device()
    method = loop_config["method"]
    objective = build_objective(cfg, method, classes, loop_config.get("stats"), loop_config.get("old_model")).to(device)
    transforms = build_transforms(method.trains, cfg.model.embedding_dim, loop_config.get("old_dim") or 0, cfg.transform)
    model = ray.train.torch.prepare_model(EmbeddingModel(cfg.model, info.channels, len(classes), transforms))
    core = model.module if hasattr(model, "module") else model
    batch_size = cfg.worker_batch_size
    batches_per_pass = len(images) // batch_size
    if batches_per_pass == 0:
        raise ValueError(f"model {cfg.name!r}: {len(images)} training images per worker, fewer than one batch "
                         f"of {batch_size} ({cfg.batch_size} over {world} workers)")
    passes = passes_per_epoch(cfg, batches_per_pass)
    steps_per_epoch = passes * batches_per_pass
    optimizer, scheduler = optimizer_and_schedule(model.parameters(), cfg.lr, cfg.weight_decay,
                                                  cfg.epochs * steps_per_epoch)
    precision = autocast_dtype(cfg.precision, device)
    scaler = torch.amp.GradScaler(device.type) if precision == torch.float16 else None
    digest = config_hash(loop_config)
    start_epoch = resume(core, optimizer, scheduler, digest, f"model {cfg.name!r}", device, scaler)
    if start_epoch and rank == 0:
        log.info("[%s] resuming from the checkpoint of epoch %d", cfg.name, start_epoch - 1)

    validation = loop_config.get("validation")
    validator = (Validator(loop_config["dataset"], labels_kept, method, cfg.validation_fraction,
                           validation["old_features"], References(validation["old_old"], validation["independent"]))
                 if validation and rank == 0 else None)
    tracker = (EpochLogger(loop_config.get("tracking_uri"), loop_config.get("mlflow_run_id"),
                           {**flat_params(loop_config["train"]), "passes_per_epoch": passes}) if rank == 0 else None)
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        shuffle = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        order = torch.cat([torch.randperm(len(images), generator=shuffle)[: batches_per_pass * batch_size]
                           for _ in range(passes)])
        totals: dict[str, float] = {}
        started = time.perf_counter()
        for step in range(steps_per_epoch):
            batch = order[step * batch_size : (step + 1) * batch_size]
            x, y = images[batch].to(device), labels[batch].to(device)
            with autocast(precision, device):
                features, logits = model(x, y)
            # The compatibility terms (angles, unit vectors) run in float32.
            terms = objective(features.float(), logits.float(), y, core.head.weight, core.transforms, images=x)
            optimizer_step(terms, optimizer, scheduler, totals,
                           lambda: f"model {cfg.name!r} at epoch {epoch} step {step}; "
                                   f"batch ids {[ids[i] for i in batch[:8].tolist()]}...", scaler)
            if rank == 0 and (step + 1) % max(1, steps_per_epoch // 4) == 0:
                rate = (step + 1) * cfg.batch_size / (time.perf_counter() - started)
                log.info("[%s] epoch %d/%d step %d/%d loss %.4f (%.0f img/s)", cfg.name, epoch + 1, cfg.epochs,
                         step + 1, steps_per_epoch, totals["loss"] / (step + 1), rate)
        metrics = _mean_over_workers(totals, steps_per_epoch, world, device)
        metrics.update(epoch=epoch, resumed_from_epoch=start_epoch,
                       images_per_s=steps_per_epoch * cfg.batch_size / (time.perf_counter() - started))
        if validator:
            metrics.update(validator(core))
        if tracker:  # before the checkpoint: a death in between logs this epoch twice, never loses it
            tracker.log_epoch(metrics, epoch)
        report_epoch(metrics, epoch, core, optimizer, scheduler, digest, with_checkpoint=rank == 0, scaler=scaler)


def _mean_over_workers(totals: dict[str, float], steps: int, world: int, device: torch.device) -> dict[str, float]:
    """Per-step means of the epoch's loss terms, averaged over all workers."""
    values = torch.tensor(list(totals.values()), dtype=torch.float64, device=device) / steps
    if world > 1:
        torch.distributed.all_reduce(values)
        values /= world
    return {f"train_{key}": float(value) for key, value in zip(totals, values.tolist())}


def config_hash(loop_config: dict[str, Any]) -> str:
    """What a checkpoint may be resumed under: the training config and its inputs."""
    keys = ("train", "dataset", "old_model", "stats", "old_dim")
    hashed = {k: loop_config.get(k) for k in keys}
    # Scheduling alone (retries, placement) may change between reruns of one run.
    hashed["train"] = {k: v for k, v in hashed["train"].items() if k not in ("max_failures", "placement_strategy")}
    return hashlib.sha256(json.dumps(hashed, sort_keys=True).encode()).hexdigest()


def uses_gpu(cfg: TrainConfig) -> bool:
    """``cfg.use_gpu``, or when unset whether the cluster has GPUs."""
    return cfg.use_gpu if cfg.use_gpu is not None else ray.cluster_resources().get("GPU", 0) > 0


def run_resources(cfg: TrainConfig) -> dict[str, float]:
    """What one training run of ``cfg`` holds while it runs: its workers' CPUs and GPUs."""
    return {"CPU": cfg.num_workers * cfg.cpus_per_worker, "GPU": cfg.num_workers if uses_gpu(cfg) else 0}


def storage_location(storage_path: str | Path) -> str:
    """Ray Train's storage: a URI (``s3://``, ``gs://``, ...) as given, a local or NFS folder made
    absolute (every node must see it: on a cluster, shared storage)."""
    text = str(storage_path)
    return text if "://" in text else str(Path(text).resolve())


def train_loop_config(cfg: TrainConfig, dataset: Path, old_model: str | Path | None = None,
                      stats: str | Path | None = None, validation: dict[str, Any] | None = None) -> dict[str, Any]:
    """What every worker of ``cfg``'s run reads, checked on the driver before any worker starts.
    ``validation`` (``old_features``, ``old_old``, ``independent``) adds a validation pass after
    each epoch (``pipeline.train.validation``)."""
    info = read_dataset_info(dataset)
    classes = [info.classes[i] for i in class_indices(info.classes, cfg.classes)]
    old_dim = None
    method = cfg.method_spec
    if method.needs_old_model:
        build_objective(cfg, method, classes, str(stats) if stats else None, str(old_model) if old_model else None)
        old_dim = read_model_card(old_model).embedding_dim
    # The method itself travels to the workers, so that one registered in the driver's process only
    # (a plugin, a test) trains too; its name is what the config and the hash hold.
    return {"train": cfg.model_dump(), "method": method, "dataset": str(dataset), "old_dim": old_dim,
            "old_model": str(Path(old_model).resolve()) if old_model else None,
            "stats": str(Path(stats).resolve()) if stats else None, "validation": validation}


def build_trainer(cfg: TrainConfig, loop_config: dict[str, Any], storage: str, run_name: str,
                  callbacks: list | None = None) -> TorchTrainer:
    """The ``TorchTrainer`` of one run: workers, backend, storage, checkpoints, retries."""
    use_gpu = uses_gpu(cfg)
    log.info("train %s: %s on %s (%d workers, gpu=%s, run %s/%s)", cfg.name, cfg.method, loop_config["dataset"],
             cfg.num_workers, use_gpu, storage, run_name)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": cfg.cpus_per_worker},
                                     placement_strategy=cfg.placement_strategy),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=RunConfig(name=run_name, storage_path=storage, checkpoint_config=CheckpointConfig(num_to_keep=2),
                             failure_config=FailureConfig(max_failures=cfg.max_failures), callbacks=callbacks),
    )


class TrainingStopped(ValueError):
    """A run stopped on a worker by bad input or a non-finite loss; its last good checkpoint stays."""


def stopped_training(error: ray.train.WorkerGroupError, run_path: str) -> Exception:
    """A worker's known error (bad data, a non-finite loss) as one message that names the run's
    last good checkpoint; any other failure as it was."""
    known = [failure for failure in error.worker_failures.values() if isinstance(failure, (ValueError, NonFiniteLoss))]
    if not known:
        return error
    checkpoint = ray.train.Result.from_path(run_path).checkpoint
    kept = f"the last good checkpoint stays in {checkpoint.path}" if checkpoint else "no checkpoint was saved"
    return TrainingStopped(f"{known[0]} ({kept}; no artifact written)")


def fit_model(cfg: TrainConfig, dataset: str | Path, artifact_dir: str | Path, *, storage_path: str | Path,
              tracking_uri: str, experiment: str, old_model: str | Path | None = None,
              stats: str | Path | None = None, parent: str | None = None, run_name: str | None = None) -> Path:
    """Train one model with a ``TorchTrainer`` and write its artifact folder.

    ``run_name`` names the Ray Train run under ``storage_path`` (default: the model's name);
    fitting again under the same name continues that run from its last checkpoint, and its
    MLflow run if that never finished (a driver that died), so no reported epoch is lost.
    Workers that die are replaced up to ``cfg.max_failures`` times, resuming from the last
    checkpoint.
    """
    from mlflow.tracking import MlflowClient

    dataset, artifact_dir = Path(dataset).resolve(), Path(artifact_dir).resolve()
    info = read_dataset_info(dataset)
    classes = [info.classes[i] for i in class_indices(info.classes, cfg.classes)]
    storage, run_name = storage_location(storage_path), run_name or cfg.name
    client = MlflowClient(tracking_uri)
    loop_config = train_loop_config(cfg, dataset, old_model, stats)
    run = resumable_run(client, tracking_uri, experiment, cfg.name, {
        "kind": "train", "method": cfg.method, "parent_model": parent or "", "ray_run": f"{storage}/{run_name}"})
    loop_config.update(tracking_uri=tracking_uri, mlflow_run_id=run.info.run_id)
    trainer = build_trainer(cfg, loop_config, storage, run_name)
    old_dim = loop_config["old_dim"]
    with finished_run(client, run.info.run_id):
        try:
            result = trainer.fit()
        except ray.train.WorkerGroupError as error:
            raise stopped_training(error, f"{storage}/{run_name}") from None
        card = ModelCard(
            id=new_model_id(cfg.name), name=cfg.name, model=cfg.model, classes=classes, channels=info.channels,
            mode=info.mode, image_size=info.image_size, method=cfg.method, old_dim=old_dim, transform=cfg.transform,
            transforms=list(loop_config["method"].trains), parent_model=parent,
            old_model_dir=str(old_model) if old_model else None, stats_file=str(Path(stats).resolve()) if stats else None,
            dataset=str(dataset), train_config=cfg.model_dump(), metrics=result.metrics, mlflow_run_id=run.info.run_id)
        write_artifact(artifact_dir, final_weights(result), card)
        client.log_artifacts(run.info.run_id, str(artifact_dir), artifact_path="model")
        client.set_tag(run.info.run_id, "model_id", card.id)
    log.info("train %s: artifact written to %s", cfg.name, artifact_dir)
    return artifact_dir
