"""Cross-model compatibility (CMC): ``T12`` and ``T21`` fit between two trained, frozen models.

Neither model changes: both encode model 2's training images once (Ray Data, the same encoder
as the gallery), and a Ray Train worker fits only the two transformations on those features.

- ``lce_cmc`` (design notes, section 2): in each target space, alignment of the mapped class
  centers with that space's centers plus the boundary hinge of the mapped features, using the
  statistics of both spaces;
- ``rbt_cmc``: the baseline, the same transformations fit by point-wise regression
  ``||T21(f2) - f1||^2`` and ``||T12(f1) - f2||^2`` on the same images.

The artifact is a folder with ``transforms.pt`` (state dict of the two transformations, loaded
with ``weights_only=True``) and ``card.json``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import ray.train
import torch
from ray.train import CheckpointConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from pipeline.compat.objectives import cmc_terms
from pipeline.compat.statistics import OldSpaceStats, compute_old_space_stats
from pipeline.compat.steps import optimizer_and_schedule, optimizer_step
from pipeline.config import CmcConfig, TrainConfig
from pipeline.data.embeddings import EmbeddingSet
from pipeline.model.artifacts import build_cmc_transforms, new_model_id, read_model_card, write_artifact
from pipeline.model.card import CmcCard, ModelRef
from pipeline.names import check_name
from pipeline.tracking import EpochLogger, experiment_id, finished_run, flat_params
from pipeline.train.checkpoints import final_weights, report_epoch, resume
from pipeline.train.inputs import train_split_embeddings, training_rows
from pipeline.train.training import storage_location

log = logging.getLogger(__name__)


def cmc_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """One Ray Train worker: fit T12 and T21 on the two models' features of the training rows."""
    cfg = CmcConfig.model_validate(loop_config["cmc"])
    torch.set_num_threads(max(1, int(cfg.cpus_per_worker)))
    torch.manual_seed(cfg.seed)
    device = ray.train.torch.get_device()
    data = np.load(loop_config["features"], allow_pickle=False)
    old_features, new_features = torch.from_numpy(data["old"]), torch.from_numpy(data["new"])
    labels = torch.from_numpy(data["labels"])
    old_space, new_space = OldSpaceStats.load(loop_config["old_space"]), OldSpaceStats.load(loop_config["new_space"])
    transforms = build_cmc_transforms(old_features.shape[1], new_features.shape[1], cfg.transform).to(device)
    steps_per_epoch = max(1, len(labels) // cfg.batch_size)
    optimizer, scheduler = optimizer_and_schedule(transforms.parameters(), cfg.lr, cfg.weight_decay,
                                                  cfg.epochs * steps_per_epoch)
    digest = loop_config["config_hash"]
    start_epoch = resume(transforms, optimizer, scheduler, digest, f"cmc {cfg.name!r}", device)
    logger = EpochLogger(loop_config["tracking_uri"], loop_config.get("mlflow_run_id"), flat_params(loop_config["cmc"]))
    for epoch in range(start_epoch, cfg.epochs):
        transforms.train()
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch))
        totals: dict[str, float] = {}
        for step in range(steps_per_epoch):
            batch = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            terms = cmc_terms(cfg.method, old_features[batch].to(device), new_features[batch].to(device),
                              labels[batch].to(device), old_space, new_space, cfg.compat, transforms)
            optimizer_step(terms, optimizer, scheduler, totals, lambda: f"cmc {cfg.name!r} at epoch {epoch} step {step}")
        metrics = {f"train_{key}": value / steps_per_epoch for key, value in totals.items()}
        logger.log_epoch(metrics, epoch)
        report_epoch({**metrics, "epoch": epoch}, epoch, transforms, optimizer, scheduler, digest)


def _paired_features(old_set: EmbeddingSet, new_set: EmbeddingSet, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both models' features of the same images: ``rows`` index ``new_set``; ids join the two."""
    position = {row_id: index for index, row_id in enumerate(old_set.ids)}
    missing = [row_id for row_id in new_set.ids[rows[:5]] if row_id not in position]
    if missing or len(old_set.ids) != len(new_set.ids):
        raise ValueError(f"{old_set.path} and {new_set.path} do not hold the same images (e.g. ids {missing})")
    old_rows = np.array([position[row_id] for row_id in new_set.ids[rows]], dtype=np.int64)
    return old_set.vectors[old_rows], new_set.vectors[rows]


def fit_cmc(cfg: CmcConfig, old_model: str | Path, new_model: str | Path, dataset: str | Path,
            artifact_dir: str | Path, *, work_dir: str | Path, storage_path: str | Path, tracking_uri: str,
            experiment: str, run_name: str | None = None, **encode_options: Any) -> Path:
    """Fit ``cfg``'s transformations between two model artifacts and write the CMC artifact.

    ``work_dir`` holds the two models' train-split embeddings (``embeddings/<model>/train``,
    reused when complete), and under ``stats/`` both spaces' statistics and the paired features
    the worker reads.
    """
    from mlflow.tracking import MlflowClient

    check_name(cfg.name, "cmc name")
    dataset, artifact_dir, work_dir = Path(dataset).resolve(), Path(artifact_dir).resolve(), Path(work_dir).resolve()
    old_card, new_card = read_model_card(old_model), read_model_card(new_model)
    new_cfg = TrainConfig.model_validate(new_card.train_config)
    sets = {role: train_split_embeddings(model, dataset, work_dir / "embeddings" / card.name / "train", **encode_options)
            for role, model, card in (("old", old_model, old_card), ("new", new_model, new_card))}
    rows, labels, classes = training_rows(sets["new"], dataset, new_cfg)
    old_features, new_features = _paired_features(sets["old"], sets["new"], rows)
    spaces = {}
    for role, features, known in (("old", old_features, old_card.classes), ("new", new_features, classes)):
        stats = compute_old_space_stats(features, labels, classes, known, cfg.compat.boundary, cfg.compat.boundary_quantile)
        spaces[role] = work_dir / "stats" / f"{cfg.name}.{role}_space.npz"
        stats.save(spaces[role])
    features_path = work_dir / "stats" / f"{cfg.name}.features.npz"
    with open(features_path, "wb") as handle:
        np.savez(handle, old=old_features, new=new_features, labels=labels)

    loop_config = {"cmc": cfg.model_dump(), "features": str(features_path), "old_space": str(spaces["old"]),
                   "new_space": str(spaces["new"]), "tracking_uri": tracking_uri}
    loop_config["config_hash"] = hashlib.sha256(json.dumps(
        {**loop_config, "old_id": old_card.id, "new_id": new_card.id}, sort_keys=True).encode()).hexdigest()
    client = MlflowClient(tracking_uri)
    run = client.create_run(experiment_id(tracking_uri, experiment), run_name=cfg.name,
                            tags={"kind": "cmc", "method": cfg.method, "old_model": old_card.name,
                                  "new_model": new_card.name})
    loop_config["mlflow_run_id"] = run.info.run_id
    trainer = TorchTrainer(cmc_loop_per_worker, train_loop_config=loop_config,
                           scaling_config=ScalingConfig(num_workers=1, use_gpu=False,
                                                        resources_per_worker={"CPU": cfg.cpus_per_worker}),
                           run_config=RunConfig(name=run_name or cfg.name, storage_path=storage_location(storage_path),
                                                checkpoint_config=CheckpointConfig(num_to_keep=2)))
    log.info("cmc %s: %s between %s and %s on %d images", cfg.name, cfg.method, old_card.name, new_card.name, len(rows))
    with finished_run(client, run.info.run_id):
        result = trainer.fit()
        card = CmcCard(id=new_model_id(cfg.name), name=cfg.name, method=cfg.method, transform=cfg.transform,
                       old_model=ModelRef(name=old_card.name, id=old_card.id, dir=str(Path(old_model).resolve()),
                                          dim=int(old_features.shape[1])),
                       new_model=ModelRef(name=new_card.name, id=new_card.id, dir=str(Path(new_model).resolve()),
                                          dim=int(new_features.shape[1])),
                       classes=classes, config=cfg.model_dump(), metrics=result.metrics, mlflow_run_id=run.info.run_id)
        write_artifact(artifact_dir, final_weights(result), card)
        client.log_artifacts(run.info.run_id, str(artifact_dir), artifact_path="cmc")
    log.info("cmc %s: artifact written to %s", cfg.name, artifact_dir)
    return artifact_dir
