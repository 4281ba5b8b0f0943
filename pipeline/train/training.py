"""Compatible training: model 2 (with its transformations, if its method trains any) fitted on
Ray Train against the old model's statistics, classifier or features, and written as a model
artifact (weights + card).

``train_worker`` is what each worker runs: its shard of the training split, the model, the
method's objective (``pipeline.compat.objectives``), then the shared epoch loop
(``pipeline.train.loop``); ``fit_model`` runs it through the shared driver
(``pipeline.train.driver``).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray.train.torch
import torch

from pipeline.compat.losses import check_same_dim, influence_weights
from pipeline.compat.methods import Method, method_of
from pipeline.compat.objectives import TrainingObjective
from pipeline.compat.statistics import OldSpaceStats
from pipeline.compat.steps import autocast
from pipeline.config import Preprocessing, RunContext, TrainConfig
from pipeline.data.dataset import class_indices, class_names, class_rows, read_dataset_info, share_with_rows
from pipeline.data.decode import load_split
from pipeline.data.embeddings import open_embeddings, read_embeddings
from pipeline.data.preprocess import model_input
from pipeline.model.artifacts import new_model_id, write_artifact
from pipeline.model.card import ModelCard, read_encoder_card
from pipeline.model.encoders import old_classifier, old_forward_module
from pipeline.model.heads import build_head
from pipeline.model.networks import EmbeddingModel, model_input_of
from pipeline.model.transformations import build_transforms
from pipeline.tracking import DESCRIPTION_TAG
from pipeline.train.checkpoints import final_weights
from pipeline.train.driver import FitJob, config_hash, run_fit
from pipeline.train.loop import RunRecord, Worker, WorkerFit, run_epochs, start_worker
from pipeline.train.stream import STREAM, StreamSpec, check_decoding_room, selected_rows, shard_batches, training_stream
from pipeline.train.validation import ValidationInputs, Validator


def _old_head(old_model_dir: str, stats: OldSpaceStats, cfg: TrainConfig) -> torch.nn.Module:
    """Model 1's classifier, frozen, with pseudo rows (the class's mean old feature) for the
    classes it never saw (BCT); a model imported without a classifier gets a pseudo row for every
    class, in the head of the new model's kind."""
    card = read_encoder_card(old_model_dir)
    check_same_dim(cfg.model.embedding_dim, card.embedding_dim, f"BCT against {old_model_dir}")
    weight, head_config = old_classifier(old_model_dir)
    head = build_head(head_config or cfg.model.head, cfg.model.embedding_dim, len(stats.classes))
    with torch.no_grad():
        head.weight.copy_(influence_weights(stats, weight, card.classes if weight is not None else []))
    return head


def build_objective(cfg: TrainConfig, method: Method, classes: list[str], stats_path: str | None,
                    old_model_dir: str | None, new_input: Preprocessing) -> TrainingObjective:
    """``method``'s objective with what it needs: the statistics (checked against the label map),
    the old classifier, the old embedder (run on ``new_input``, the new model's input, which the
    old model must read too); a method that compares the two spaces as they are needs one
    dimension."""
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
        check_same_dim(cfg.model.embedding_dim, read_encoder_card(old_model_dir).embedding_dim,
                       f"model {cfg.name!r} against the old model {old_model_dir}")
    old_head = _old_head(old_model_dir, stats, cfg) if method.needs_old_classifier else None
    old_embedder = old_forward_module(old_model_dir, new_input) if method.needs_old_forward else None
    return TrainingObjective(method, cfg.compat, stats, old_head, old_embedder)


def init_seed(cfg: TrainConfig) -> int:
    """The weight-initialisation seed: the config's seed mixed with the model's name, so that two
    models (an old one and an independent new one) never start from the same weights by accident,
    which would make them look compatible."""
    return cfg.seed * 1_000_003 + zlib.crc32(cfg.name.encode())


@dataclass(frozen=True)
class TrainInputs:
    """What every worker of one training fit reads, checked on the driver (``training_job``). The
    config and the method's catalogue entry arrive as the driver validated them (a method
    registered in the driver's process only trains too)."""

    config: TrainConfig
    method: Method
    dataset: str                   # the dataset folder
    preprocessing: Preprocessing   # what the model reads
    record: RunRecord
    old_model: str | None = None   # the old model's folder, where the method runs or reads it
    old_dim: int | None = None     # its embedding dimension
    stats: str | None = None       # the old-space statistics, where the method needs them
    old_features: str | None = None  # the old model's train-split embeddings, where the method reads them by id
    stream_rows: int | None = None   # rows of the driver's stream (ingest: stream)
    validation: ValidationInputs | None = None  # a validation pass after each epoch (a sweep's trial)


def train_worker(inputs: TrainInputs) -> None:
    """One Ray Train worker: fit ``EmbeddingModel`` on its shard of the training split."""
    cfg = inputs.config
    worker = start_worker(cfg)
    torch.manual_seed(init_seed(cfg))
    run_epochs(_worker_fit(inputs, worker), cfg, worker, inputs.record)


@dataclass(frozen=True)
class _ShardData:
    """A worker's training rows: held in memory, or streamed (``pipeline.train.stream``)."""

    rows: int
    tensors: Callable[[Any, torch.device], tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]  # x, y, old, on it
    describe: Callable[[Any], str]
    batches: Callable[[int, int], Iterable[Any]] | None = None  # None: the held rows' seeded shuffles


def _held_rows(inputs: TrainInputs, worker: Worker, labels_kept: list[int]) -> _ShardData:
    """This worker's equal share of the training rows, decoded once and held; batches are row positions."""
    cfg, preprocessing = inputs.config, inputs.preprocessing
    ids, images, dataset_labels = load_split(inputs.dataset, "train", labels_kept, cfg.data_fraction,
                                             cfg.seed, shard=(worker.rank, worker.world),
                                             validation_fraction=cfg.validation_fraction, preprocessing=preprocessing,
                                             min_rows=cfg.min_rows)
    to_model_label = {dataset_label: index for index, dataset_label in enumerate(labels_kept)}
    images = torch.from_numpy(images)
    labels = torch.tensor([to_model_label[int(y)] for y in dataset_labels])
    old_features = (torch.from_numpy(read_embeddings(inputs.old_features).vectors_of(ids))
                    if inputs.old_features else None)

    def tensors(batch: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        return (images[batch].to(device), labels[batch].to(device),
                old_features[batch].to(device) if old_features is not None else None)

    return _ShardData(len(images), tensors, lambda batch: f"batch ids {[ids[i] for i in batch[:8].tolist()]}...")


def _streamed_rows(inputs: TrainInputs, worker: Worker) -> _ShardData:
    """This worker's shard of the driver's stream: decoded (and augmented) pixels, labels and old
    features come in batches; the worker only scales the pixels to the model's input."""
    shard = ray.train.get_dataset_shard(STREAM)

    def tensors(batch: dict, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        old_features = batch.get("old_features")
        return (model_input(batch["pixels"].to(device), inputs.preprocessing), batch["label"].to(device),
                old_features.to(device) if old_features is not None else None)

    return _ShardData(inputs.stream_rows // worker.world, tensors,
                      lambda batch: f"batch ids {batch['id'][:8].tolist()}...",
                      shard_batches(shard, inputs.config.worker_batch_size, inputs.config.seed))


def _worker_fit(inputs: TrainInputs, worker: Worker) -> WorkerFit:
    """This worker's shard, model and objective; the order of the weights' draws is fixed
    (the objective's old parts, the transformations, then the model)."""
    cfg, method, preprocessing = inputs.config, inputs.method, inputs.preprocessing
    info = read_dataset_info(inputs.dataset)
    labels_kept = class_indices(info.classes, cfg.classes)
    classes = [info.classes[i] for i in labels_kept]
    data = _streamed_rows(inputs, worker) if cfg.ingest == "stream" else _held_rows(inputs, worker, labels_kept)
    device = worker.device
    objective = build_objective(cfg, method, classes, inputs.stats, inputs.old_model, preprocessing).to(device)
    transforms = build_transforms(method.trains, cfg.model.embedding_dim, inputs.old_dim or 0, cfg.transform)
    model = ray.train.torch.prepare_model(EmbeddingModel(cfg.model, preprocessing.channels, len(classes), transforms))
    core = model.module if hasattr(model, "module") else model

    def terms(batch: Any) -> dict[str, torch.Tensor]:
        x, y, old_features = data.tensors(batch, device)
        with autocast(worker.precision, device):
            features, logits = model(x, y)
        # The compatibility terms (angles, unit vectors) run in float32.
        return objective(features.float(), logits.float(), y, core.head.weight, core.transforms, images=x,
                         old_features=old_features)

    validation, validate = inputs.validation, None
    if validation and worker.rank == 0:
        validator = Validator(inputs.dataset, labels_kept, method, cfg.validation_fraction, validation.old_features,
                              validation.references, preprocessing)
        validate = lambda: validator(core)  # noqa: E731
    return WorkerFit(f"model {cfg.name!r}", core, model, data.rows, terms, data.describe, validate, data.batches)


def check_old_features(folder: str | Path | None, cfg: TrainConfig, old_model: str | Path, dataset: Path) -> None:
    """The old features a method reads by id: given, from the old model, of ``dataset``'s images."""
    if folder is None:
        raise ValueError(f"model {cfg.name!r}: method {cfg.method!r} needs the old model's train-split embeddings "
                         "(old_features)")
    files, old_card = open_embeddings(folder), read_encoder_card(old_model)
    if files.model_id != old_card.id:
        raise ValueError(f"{folder}: embeddings of model {files.model_name!r} ({files.model_id}), not of the old model "
                         f"{old_card.name!r} ({old_card.id}) at {old_model}")
    if files.classes != read_dataset_info(dataset).classes:
        raise ValueError(f"{folder}: encoded from a dataset with classes {files.classes}, not {dataset}")


def _with_pretrained_file_resolved(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with its timm ``pretrained_file`` made absolute and checked on the driver (the
    workers read it, from another working directory)."""
    given = cfg.model.pretrained_file
    if given is None:
        return cfg
    path = Path(given).resolve()
    if not path.is_file():
        raise ValueError(f"model {cfg.name!r}: model.pretrained_file {given} not found")
    return cfg.model_copy(update={"model": cfg.model.model_copy(update={"pretrained_file": str(path)})})


def training_job(cfg: TrainConfig, dataset: Path, old_model: str | Path | None = None, stats: str | Path | None = None,
                 validation: ValidationInputs | None = None, parent: str | None = None,
                 old_features: str | Path | None = None) -> FitJob:
    """``cfg``'s fit, its inputs checked on the driver before any worker starts. ``validation``
    adds a validation pass after each epoch
    (``pipeline.train.validation``); ``old_features`` is the old model's embeddings of the
    training split, which the forward manner and LCE's point-wise term (``compat.target_pull``) read by id."""
    info = read_dataset_info(dataset)
    labels_kept = class_indices(info.classes, cfg.classes)
    classes = [info.classes[i] for i in labels_kept]
    cfg = _with_pretrained_file_resolved(cfg)
    preprocessing = model_input_of(cfg.model, info.mode, info.image_size)
    old_dim = None
    method = method_of(cfg)
    if method.needs_old_model:
        build_objective(cfg, method, classes, str(stats) if stats else None, str(old_model) if old_model else None,
                        preprocessing)
        old_dim = read_encoder_card(old_model).embedding_dim
    reads_old_features = method.reads_old_features(cfg.compat)
    if reads_old_features:
        check_old_features(old_features, cfg, old_model, dataset)
    stream = None
    if cfg.ingest == "stream":
        check_decoding_room(cfg.reserved_cpus, cfg.decoding_cpus)
        fraction = share_with_rows(cfg.data_fraction, cfg.min_rows, class_rows(dataset, "train", labels_kept))
        stream = StreamSpec(str(dataset), labels_kept, fraction, cfg.seed,
                            cfg.validation_fraction, preprocessing, cfg.augment,
                            str(Path(old_features).resolve()) if reads_old_features else None, cfg.decoding_cpus)
    read = {"dataset": str(dataset), "old_dim": old_dim, "input": preprocessing.model_dump(),
            "stream_rows": selected_rows(stream) if stream else None,
            "old_model": str(Path(old_model).resolve()) if old_model else None,
            "stats": str(Path(stats).resolve()) if stats else None,
            "old_features": str(Path(old_features).resolve()) if reads_old_features else None}
    # What the hash holds: the config (the method by its name) and what the workers read.
    inputs = TrainInputs(config=cfg, method=method, dataset=read["dataset"], preprocessing=preprocessing,
                         record=RunRecord(config_hash(cfg, read)), old_model=read["old_model"], old_dim=old_dim,
                         stats=read["stats"], old_features=read["old_features"], stream_rows=read["stream_rows"],
                         validation=validation)
    against = f", compatible with {parent}" if parent else ""
    description = (f"Trains {cfg.name} with {cfg.method}{against}: {cfg.model.architecture}, "
                   f"{cfg.model.embedding_dim}-d, {cfg.epochs} epochs on {len(classes)} classes of {Path(dataset).name}")
    return FitJob(cfg, train_worker, inputs, {"kind": "train", "method": cfg.method, "parent_model": parent or "",
                                                   DESCRIPTION_TAG: description},
                  datasets={STREAM: lambda: training_stream(stream)} if stream else {}, dataset=str(dataset))


def fit_model(cfg: TrainConfig, dataset: str | Path, artifact_dir: str | Path, context: RunContext, *,
              old_model: str | Path | None = None, stats: str | Path | None = None, parent: str | None = None,
              run_name: str | None = None, old_features: str | Path | None = None) -> Path:
    """Train one model and write its artifact folder (``pipeline.train.driver.run_fit``: a rerun
    under the same ``run_name`` continues the run)."""
    dataset, artifact_dir = Path(dataset).resolve(), Path(artifact_dir).resolve()
    info = read_dataset_info(dataset)
    classes = class_names(info.classes, cfg.classes)
    job = training_job(cfg, dataset, old_model, stats, parent=parent, old_features=old_features)

    def write(result: ray.train.Result, run_id: str) -> Path:
        card = ModelCard(
            id=new_model_id(cfg.name), name=cfg.name, model=cfg.model, classes=classes,
            channels=info.channels, mode=info.mode, image_size=info.image_size, method=cfg.method,
            old_dim=job.inputs.old_dim, transform=cfg.transform, transforms=list(method_of(cfg).trains),
            parent_model=parent, old_model_dir=str(old_model) if old_model else None,
            stats_file=job.inputs.stats, old_features=job.inputs.old_features,
            input=job.inputs.preprocessing, dataset=str(dataset),
            train_config=cfg.model_dump(), metrics=result.metrics, mlflow_run_id=run_id)
        return write_artifact(artifact_dir, final_weights(result), card)

    return run_fit(job, context, run_name, write, artifact_path="model")
