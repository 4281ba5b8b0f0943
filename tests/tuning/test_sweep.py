"""Sweeps: the search space's validation, the objective, and a tiny sweep on the real local Ray."""

from __future__ import annotations

import logging
import math
import shutil
import time

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline.config import ConfigError
from pipeline.data.decode import load_split
from pipeline.data.importers import ingest
from pipeline.flows.configs import load_train_config
from pipeline.score.criteria import update_gain
from pipeline.score.retrieval import per_query_metrics, summarize
from pipeline.train.validation import References, compat_objective, top1
from tuning.space import load_sweep_config, trial_config

SPACE_HEADER = """
name: s
old: {name: old}
trial: {name: lce, method: lce_direct}
"""


def _load(tmp_path, text):
    path = tmp_path / "sweep.yaml"
    path.write_text(SPACE_HEADER + text)
    return load_sweep_config(path)


def test_space_accepts_every_searched_kind(tmp_path):
    cfg = _load(tmp_path, """space:
  method: {choice: [lce_direct, lce_backward, lce_forward]}
  transform.blocks: {randint: [1, 3]}
  compat.compactness_margin: {uniform: [0.0, 0.8]}
  compat.lambda_align: {loguniform: [0.1, 10]}
""")
    assert set(cfg.tune_space()) == {"method", "transform.blocks", "compat.compactness_margin", "compat.lambda_align"}
    assert trial_config(cfg.trial, {"transform.hidden": 64, "method": "lce_forward"}).transform.hidden == 64


@pytest.mark.parametrize(("space", "message"), [
    ("  transform.blockz: {choice: [1]}", "space key 'transform.blockz'.*not a key of the training config"),
    ("  compat.compactness_margin: {uniform: [-0.5, 0.5]}", "space key 'compat.compactness_margin' value -0.5"),
    ("  lr: {uniform: [0.1, 1.0], choice: [0.1]}", "exactly one of choice, uniform"),
    ("  lr: {loguniform: [0.0, 1.0]}", "positive low bound"),
    ("  method: {choice: [lce_sideways]}", "value 'lce_sideways'"),
    ("  transform.blocks: {randint: [3, 1]}", "low 3 must be below high 1"),
    ("  epochs: {choice: [2, 4]}", r"space keys \['epochs'\] cannot be searched"),
])
def test_space_errors_name_the_key(tmp_path, space, message):
    with pytest.raises(ConfigError, match=message):
        _load(tmp_path, "space:\n" + space + "\n")


def test_objective_is_the_harmonic_mean_of_gain_and_retention():
    references = References(old_old=0.80, independent=0.90)
    assert update_gain(0.85, references.old_old, references.independent) == pytest.approx(0.5)
    assert compat_objective(0.5, 1.0) == pytest.approx(2 * 0.5 / 1.5)
    assert compat_objective(1.0, 1.0) == 1.0
    assert compat_objective(-0.2, 0.99) == -0.2 and compat_objective(0.5, 0.0) == 0.0  # ranks incompatible trials
    with pytest.raises(ValueError, match="no better than the old one"):
        References(old_old=0.80, independent=0.79).check_upgrade()


def test_the_objective_takes_the_gain_at_the_low_end_of_its_paired_interval():
    import torch

    from pipeline.compat.methods import method_named
    from pipeline.score.uncertainty import paired_interval
    from pipeline.train.validation import top1_hits, validation_metrics

    rng = np.random.default_rng(1)
    labels, ids = rng.integers(0, 4, 400), np.arange(400)
    centers = rng.normal(size=(4, 8))
    old = centers[labels] + rng.normal(scale=1.2, size=(400, 8))
    new = centers[labels] + rng.normal(scale=0.9, size=(400, 8))
    old_old_hits = top1_hits(old, old, labels, ids)
    references = References(old_old=float(old_old_hits.mean()), independent=0.99)
    metrics = validation_metrics(method_named("lce_direct"), torch.tensor(new), torch.tensor(old), labels, ids,
                                 torch.nn.ModuleDict(), references, old_old_hits)
    new_old_hits = top1_hits(new, old, labels, ids)
    low = paired_interval(new_old_hits, old_old_hits).low
    assert metrics["val_gain"] == pytest.approx((new_old_hits.mean() - references.old_old) / (0.99 - references.old_old))
    assert metrics["val_gain_low"] == pytest.approx(low / (0.99 - references.old_old))
    assert metrics["val_gain_low"] < metrics["val_gain"]
    assert metrics["objective"] == pytest.approx(compat_objective(metrics["val_gain_low"], metrics["val_retention"]))


def test_confirmation_reads_each_seeds_compatible_route_and_its_interval():
    import pandas as pd

    from pipeline.compat.methods import method_named
    from tuning.confirm import seed_result

    cells = {"top1": 0.84, "map": 0.60, "delta_top1": 0.02, "delta_top1_low": -0.001, "delta_top1_high": 0.04,
             "verdict_top1": "within noise", "delta_map": 0.05, "delta_map_low": 0.03, "delta_map_high": 0.07,
             "verdict_map": "met"}
    table = pd.DataFrame([{"query_model": "old", "gallery_model": "old", "top1": 0.82, "map": 0.55},
                          {"query_model": "lce-best-s1", "gallery_model": "old.t12.lce-best-s1", **cells},
                          {"query_model": "lce-best-s1", "gallery_model": "old", "top1": 0.1, "map": 0.1}])
    result = seed_result(table, method_named("lce_forward"), "lce-best-s1", 1)  # judged through T12
    assert result["route"] == "lce-best-s1 -> old.t12.lce-best-s1"
    assert result["delta_top1_low"] == -0.001 and result["verdict_top1"] == "within noise"
    # both estimates are above old/old, but top-1's interval holds 0: the seed does not meet the criterion
    assert result["meets_criterion"] is False and result["decision"] == "inconclusive"
    assert result["line"] == ("lce-best-s1 -> old.t12.lce-best-s1: inconclusive (top1 +2.00 [-0.10, +4.00] within "
                              "noise; map +5.00 [+3.00, +7.00] met)")


def test_validation_top1_is_the_retrieval_metric():
    rng = np.random.default_rng(0)
    vectors, labels, ids = rng.normal(size=(60, 4)), rng.integers(0, 3, 60), np.arange(60)
    expected = summarize(per_query_metrics(vectors, labels, vectors, labels, ids, ids, topk=(1,)))["top1"]
    assert top1(vectors, vectors, labels, ids) == pytest.approx(expected)


def test_validation_rows_are_held_out_of_training(fashion_subset, tmp_path):
    ingest(fashion_subset, tmp_path / "ds")
    train_ids, _, _ = load_split(tmp_path / "ds", "train", validation_fraction=0.2)
    validation_ids, _, _ = load_split(tmp_path / "ds", "train", validation_fraction=0.2, validation=True)
    all_ids, _, _ = load_split(tmp_path / "ds", "train")
    assert not set(train_ids) & set(validation_ids)
    assert sorted(train_ids + validation_ids) == sorted(all_ids)
    assert 0.1 < len(validation_ids) / len(all_ids) < 0.3


TINY_SWEEP = """
name: {name}
output_dir: {out}
data: {{source: {source}, root: {root}}}
mlflow: {{experiment: sweeps}}
validation_fraction: 0.25
train:
  model: {{embedding_dim: 16}}
  batch_size: 64
  cpus_per_worker: 0.95
  min_steps: 40
old: {{name: old, classes: first_half, epochs: 1}}
trial: {{name: lce, method: lce_direct, epochs: 2}}
space:
  model.embedding_dim: {{choice: {dims}}}   # 8 differs from the old model's 16: those trials crash
  compat.compactness_margin: {{uniform: [0.0, 0.5]}}
search: {{algorithm: {algorithm}, num_samples: {samples}, seed: 0}}
"""


@pytest.mark.slow
@pytest.mark.ray
def test_tiny_sweep_records_crashed_trials_and_leaves_nothing_reserved(ray_cluster, fashion_subset, tmp_path, caplog):
    from tuning.sweep import run_sweep

    def sweep(name, samples, algorithm="grid", dims="[16, 8]"):
        path = tmp_path / f"{name}.yaml"
        path.write_text(TINY_SWEEP.format(name=name, out=tmp_path / "sweeps", source=fashion_subset,
                                          root=tmp_path / "data", samples=samples, algorithm=algorithm, dims=dims))
        return run_sweep(load_sweep_config(path))

    table, best_path = sweep("first", samples=2)
    assert len(table) == 4
    crashed = table[table.status == "error"]
    assert list(crashed["model.embedding_dim"]) == [8, 8]
    assert all("dimension 8 differs from old dimension 16" in error for error in crashed.error)
    ran = table[table.status != "error"]
    assert len(ran) == 2 and ran.objective.notna().all() and (ran.epochs >= 1).all()
    best = load_train_config(best_path)  # what jobs.train reads
    assert best.model.embedding_dim == 16 and best.validation_fraction == 0.25
    assert best.compat.compactness_margin == pytest.approx(float(ran.loc[ran.objective.idxmax(),
                                                                         "compat.compactness_margin"]))
    assert (best_path.parent / "objective_vs_params.png").stat().st_size > 0
    assert pd.read_csv(best_path.parent / "trials.csv").shape[0] == 4

    client = mlflow.tracking.MlflowClient(f"sqlite:///{best_path.parent / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("sweeps").experiment_id
    parent = client.search_runs([experiment], "tags.kind = 'sweep'")[0]
    assert parent.data.metrics["trials_failed"] == 2 and not math.isnan(parent.data.metrics["best_objective"])
    children = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(children) == 4

    # Nothing stays reserved: every CPU comes back (trial actors and their Ray Train placement groups
    # are released asynchronously, within seconds), and a second sweep in this session (Optuna's TPE
    # this time) runs to the end.
    deadline = time.monotonic() + 60
    while ray_cluster.available_resources().get("CPU", 0) < 2.0 - 1e-6 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert ray_cluster.available_resources().get("CPU") == pytest.approx(2.0)
    from ray.util import placement_group_table

    assert all(group["state"] == "REMOVED" for group in placement_group_table().values())
    # The fixed models of the first sweep, found by the second under the same configs, are reused.
    shutil.copytree(tmp_path / "sweeps" / "first" / "models", tmp_path / "sweeps" / "second" / "models")
    caplog.set_level(logging.INFO, logger="tuning.sweep")
    table, second_best = sweep("second", samples=1, algorithm="optuna", dims="[16]")
    assert caplog.text.count("sweep: reusing") == 2
    assert len(table) == 1 and (table.status != "error").all()
    assert load_train_config(second_best).model.embedding_dim == 16
    assert yaml.safe_load(best_path.read_text())["name"] == "lce"
