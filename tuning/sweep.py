"""Ray Tune sweep of LCE's transformation sizes, compactness margin, loss weights and manner.

    python -m tuning.sweep --config tuning/configs/demo.yaml

Once per sweep: the old model and the independent reference are trained, the old-space
statistics computed, and both fixed models measured on the validation rows. Then Tune runs one
driver function per trial that builds and fits a ``TorchTrainer`` (under Ray 2.60's Train V2 a
trainer cannot be a Tune trainable itself), whose ``TuneReportCallback`` passes each epoch's
validation metrics to ASHA. Outputs
under ``<output_dir>/<name>/``: ``trials.csv`` (every trial, its values, status, error, metrics),
``best.yaml`` (a config ``jobs.train`` takes as is), ``objective_vs_params.png``, ``sweep.yaml``
(the config it ran, for ``tuning.confirm``); in MLflow, one
run per trial (``MLflowLoggerCallback``) nested under the sweep's run, which holds the best
config and those files.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import ray
import yaml
from ray import tune
from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import BasicVariantGenerator

from pipeline.atomic import write_npz_atomic, write_text_atomic
from pipeline.compat.methods import INDEPENDENT
from pipeline.config import RunContext, TrainConfig
from pipeline.data.dataset import class_indices, read_dataset_info
from pipeline.data.decode import load_split
from pipeline.data.importers import ensure_dataset
from pipeline.encode.split import train_split_embeddings
from pipeline.flows.workspace import Workspace
from pipeline.model.artifacts import load_model
from pipeline.model.card import CARD_FILE, read_model_card
from pipeline.runtime import init_ray, runs_at_once, side_by_side
from pipeline.tracking import DESCRIPTION_TAG, experiment_id, finished_run
from pipeline.train.driver import build_trainer, fits_at_once, run_resources
from pipeline.train.inputs import stats_for_model
from pipeline.train.training import fit_model, training_job
from pipeline.train.validation import References, ValidationInputs, embed_images, top1
from tuning.space import SweepConfig, load_sweep_config, trial_config

log = logging.getLogger(__name__)
# A trial's driver only waits on its TorchTrainer, whose workers hold the CPUs; Tune needs some
# resource per trial, so the driver takes this sliver (configs give workers 1 - DRIVER_CPUS CPUs
# so that trials pack whole cores).
DRIVER_CPUS = 0.05


@dataclass(frozen=True)
class SweepInputs:
    """What every trial reads: fixed models, statistics, validation features and references."""

    dataset: Path
    old_model: Path
    stats: Path
    old_features: Path          # the old model's train-split embeddings (the forward manner reads them)
    validation: ValidationInputs


def _fit_once(cfg: TrainConfig, dataset: Path, workspace: Workspace, context: RunContext) -> Path:
    """A fixed model of the sweep, reused when an earlier run trained it under the same config."""
    folder = workspace.model(cfg.name)
    if (folder / CARD_FILE).is_file() and read_model_card(folder).train_config == cfg.model_dump():
        log.info("sweep: reusing %s", folder)
        return folder
    return fit_model(cfg, dataset, folder, context, run_name=f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}")


def prepare(cfg: SweepConfig) -> SweepInputs:
    """Ingest, train the old and the independent model (side by side), statistics, references."""
    workspace = Workspace.at(cfg.run_dir())
    dataset = ensure_dataset(cfg.data, cfg.old.seed)
    held_out = {"validation_fraction": cfg.validation_fraction}
    old = cfg.old.model_copy(update=held_out)
    independent = cfg.trial.model_copy(update={**held_out, "name": "independent", "method": INDEPENDENT.name})
    context = RunContext(cfg.tracking_uri(), cfg.mlflow.experiment, str(workspace.ray))
    experiment_id(context.tracking_uri, context.experiment)  # created here, not by two fits at once
    old_dir, independent_dir = side_by_side(lambda c: _fit_once(c, dataset, workspace, context), [old, independent],
                                            fits_at_once([old, independent], 2), "fixed models")

    template = cfg.trial.model_copy(update=held_out)  # every trial's methods may read both: made once, for all
    embeddings = train_split_embeddings(old_dir, dataset, workspace.embeddings(old.name, "train"))
    stats = stats_for_model(template, old_dir, embeddings, dataset, workspace.statistics(template.name))

    info = read_dataset_info(dataset)
    ids, images, labels = load_split(dataset, "train", class_indices(info.classes, template.classes),
                                     validation_fraction=cfg.validation_fraction, validation=True,
                                     preprocessing=read_model_card(independent_dir).preprocessing)
    old_vectors = np.asarray(embeddings.vectors_of(ids), dtype=np.float32)
    features = workspace.validation_features
    write_npz_atomic(features, ids=np.asarray(ids), vectors=old_vectors)
    ids, independent_vectors = np.asarray(ids), embed_images(load_model(independent_dir)[0].eval(), images).numpy()
    references = {"old_old": top1(old_vectors, old_vectors, labels, ids),
                  "independent": top1(independent_vectors, independent_vectors, labels, ids)}
    References(**references).check_upgrade()
    write_text_atomic(workspace.validation_references, json.dumps(references))
    log.info("sweep: %d validation rows; old/old top-1 %.4f, independent %.4f", len(ids), references["old_old"],
             references["independent"])
    return SweepInputs(dataset, old_dir, stats, Path(embeddings.path), ValidationInputs(str(features),
                                                                                        References(**references)))


def run_trial(params: dict[str, Any], *, template: TrainConfig, inputs: SweepInputs, storage: str) -> None:
    """One trial: the template config with the trial's values, fitted by its own ``TorchTrainer``."""
    cfg = trial_config(template, params)
    job = training_job(cfg, inputs.dataset, inputs.old_model, inputs.stats, inputs.validation,
                       old_features=inputs.old_features)
    run_name = f"{cfg.name}-{tune.get_context().get_trial_id()}"
    build_trainer(job, storage, run_name, callbacks=[TuneReportCallback()]).fit()


def _search_algorithm(cfg: SweepConfig, at_once: int) -> Any:
    """Seeded: random and grid through Tune's variant generator (which applies its own limit of
    trials at once: Tune ignores ``max_concurrent_trials`` for it), or Optuna's TPE."""
    if cfg.search.algorithm != "optuna":
        return BasicVariantGenerator(max_concurrent=at_once, random_state=cfg.search.seed)
    from ray.tune.search.optuna import OptunaSearch

    return OptunaSearch(seed=cfg.search.seed)


def trials_table(results: tune.ResultGrid, cfg: SweepConfig) -> pd.DataFrame:
    """One row per trial: its values, how it ended, its error, its last epoch's metrics."""
    rows = []
    for result in results:
        metrics = result.metrics or {}
        epochs = int(metrics.get("training_iteration", 0))
        status = "error" if result.error else ("finished" if epochs >= cfg.trial.epochs else "stopped early")
        rows.append({"trial": Path(result.path).name, **{key: result.config.get(key) for key in cfg.space},
                     "status": status, "epochs": epochs,
                     "error": str(result.error).strip().splitlines()[-1] if result.error else "",
                     **{key: metrics.get(key, math.nan) for key in
                        ("objective", "val_gain", "val_gain_low", "val_retention", "val_new_old_top1",
                         "val_new_new_top1")}})
    return pd.DataFrame(rows)


def plot_objective(table: pd.DataFrame, keys: list[str], path: Path) -> None:
    """Objective against each searched value, one panel per key (categories as positions)."""
    import matplotlib.pyplot as plt

    from pipeline.score import save_figure

    figure, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3), squeeze=False)
    for axis, key in zip(axes[0], keys):
        values = table[key]
        if pd.api.types.is_numeric_dtype(values):
            axis.scatter(values, table["objective"])
        else:
            labels = sorted(values.astype(str).unique())
            axis.scatter([labels.index(v) for v in values.astype(str)], table["objective"])
            axis.set_xticks(range(len(labels)), labels, rotation=30, fontsize=7)
        axis.set_xlabel(key, fontsize=8)
    axes[0][0].set_ylabel("objective (last epoch)")
    save_figure(figure, path, dpi=120)


def run_sweep(cfg: SweepConfig) -> tuple[pd.DataFrame, Path]:
    """The whole sweep; returns the trials table and the best config's YAML path."""
    from mlflow.tracking import MlflowClient

    workspace = Workspace.at(cfg.run_dir())
    workspace.root.mkdir(parents=True, exist_ok=True)
    ran = cfg.model_dump(mode="json")  # with absolute paths: tuning.confirm may run from anywhere
    ran["output_dir"] = str(Path(cfg.output_dir).resolve())
    ran["data"]["root"] = str(Path(cfg.data.root).resolve())
    ran["mlflow"]["tracking_uri"] = cfg.tracking_uri()
    write_text_atomic(workspace.sweep_config, yaml.safe_dump(ran, sort_keys=False))
    inputs = prepare(cfg)
    template = cfg.trial.model_copy(update={"validation_fraction": cfg.validation_fraction})
    tracking_uri = cfg.tracking_uri()
    client = MlflowClient(tracking_uri)
    parent = client.create_run(experiment_id(tracking_uri, cfg.mlflow.experiment), run_name=f"sweep {cfg.name}",
                               tags={"kind": "sweep", "algorithm": cfg.search.algorithm,
                                     DESCRIPTION_TAG: f"Ray Tune sweep {cfg.name} ({cfg.search.algorithm}): its trials "
                                                      f"are the nested runs, the winner in this run's tags"})
    per_trial = run_resources(template)
    per_trial["CPU"] += DRIVER_CPUS
    at_once = cfg.search.max_concurrent_trials or runs_at_once(per_trial)
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, template=template, inputs=inputs, storage=str(workspace.ray)),
        {"cpu": DRIVER_CPUS})
    tuner = tune.Tuner(
        trainable,
        param_space=cfg.tune_space(),
        tune_config=tune.TuneConfig(
            metric="objective", mode="max", num_samples=cfg.search.num_samples,
            max_concurrent_trials=None if cfg.search.algorithm != "optuna" else at_once,
            search_alg=_search_algorithm(cfg, at_once),
            scheduler=ASHAScheduler(time_attr="training_iteration", max_t=template.epochs,
                                    grace_period=cfg.asha.grace_period, reduction_factor=cfg.asha.reduction_factor)),
        run_config=tune.RunConfig(
            name=f"sweep-{parent.info.run_id[:8]}", storage_path=str(workspace.tune),
            failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
            callbacks=[MLflowLoggerCallback(tracking_uri=tracking_uri, experiment_name=cfg.mlflow.experiment,
                                            tags={"mlflow.parentRunId": parent.info.run_id, "kind": "trial"},
                                            save_artifact=False)]),
    )
    log.info("sweep %s: %s search, %d samples, %d trial(s) at once", cfg.name, cfg.search.algorithm,
             cfg.search.num_samples, at_once)
    with finished_run(client, parent.info.run_id):
        table = trials_table(tuner.fit(), cfg)
        best_path = _record_best(cfg, template, table, inputs, client, parent.info.run_id)
    return table, best_path


def _record_best(cfg: SweepConfig, template: TrainConfig, table: pd.DataFrame, inputs: SweepInputs, client: Any,
                 run_id: str) -> Path:
    """The trials table, the best config (``best.yaml``), the plot, and the sweep run's params,
    metrics and artifacts."""
    from mlflow.entities import Param

    workspace = Workspace.at(cfg.run_dir())
    write_text_atomic(workspace.trials, table.to_csv(index=False))
    done = table[table.status != "error"].dropna(subset=["objective"])
    if done.empty:
        raise RuntimeError(f"sweep {cfg.name}: no trial reported an objective; errors:\n{table.error.to_string()}")
    best_row = done.loc[done.objective.idxmax()]
    best = trial_config(template, {key: _plain(best_row[key]) for key in cfg.space})
    best_path = workspace.best_config
    write_text_atomic(best_path, f"# best of sweep {cfg.name} (trial {best_row.trial}, objective "
                         f"{best_row.objective:.4f}); python -m jobs.train --config {best_path.name} ...\n"
                         + yaml.safe_dump(best.model_dump(), sort_keys=False))
    plot_objective(table, list(cfg.space), workspace.objective_plot)
    client.log_batch(run_id, params=[Param(f"best.{key}", str(_plain(best_row[key]))) for key in cfg.space])
    for key, value in {"best_objective": best_row.objective, "median_objective": float(done.objective.median()),
                       "trials": len(table), "trials_failed": int((table.status == "error").sum()),
                       "trials_stopped_early": int((table.status == "stopped early").sum()),
                       **{f"reference_{k}": v for k, v in asdict(inputs.validation.references).items()}}.items():
        client.log_metric(run_id, key, float(value))
    for path in (workspace.trials, best_path, workspace.objective_plot):
        client.log_artifact(run_id, str(path))
    return best_path


def _plain(value: Any) -> Any:
    """numpy scalars from the table as the plain Python values a config holds."""
    return value.item() if isinstance(value, np.generic) else value


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tuning.sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="sweep YAML (tuning.space.SweepConfig)")
    parser.add_argument("--ray-address", default=None)
    args = parser.parse_args()
    cfg = load_sweep_config(args.config)
    init_ray(args.ray_address or cfg.ray_address)
    table, best = run_sweep(cfg)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table.drop(columns=["error"]).to_string(index=False))
    print(f"best config: {best}\ntrials: {Workspace.at(cfg.run_dir()).trials}\nMLflow: {cfg.tracking_uri()}")
    ray.shutdown()


if __name__ == "__main__":
    from jobs.cli import run_main

    run_main(main)
