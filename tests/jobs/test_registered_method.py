"""A method registered in the catalogue, inside this test only, trains, encodes and scores through
the real jobs (in this process, on the session's Ray cluster) with no other file edited."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from pipeline.compat import losses
from pipeline.compat.methods import Kind, Method, Role, register, unregister
from pipeline.model.card import read_card
from pipeline.model.transformations import BACKWARD
from tests.jobs.helpers import run_job, untrained_model

pytestmark = pytest.mark.ray


def backward_alignment_only(batch: losses.TrainingBatch) -> dict[str, torch.Tensor]:
    """A toy manner: LCE backward's alignment through T21, with no boundary term."""
    mapped_weights = losses.map_rows(batch.transforms[BACKWARD], batch.class_weights)[0]
    return {"align": losses.alignment_loss(mapped_weights, batch.centers, batch.class_mask)}


@pytest.fixture()
def toy_method():
    method = register(Method("toy_align", Kind.TRAIN, Role.LCE, backward_alignment_only, (BACKWARD,),
                             needs_statistics=True))
    yield method
    unregister(method.name)


def _config(folder, name, **fields):
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "epochs": 1, "batch_size": 64, "cpus_per_worker": 1,
                                    "model": {"embedding_dim": 16}, **fields}))
    return path


def test_a_registered_method_trains_encodes_and_scores_through_the_jobs(tmp_path, fashion_subset, ray_cluster,
                                                                       toy_method, caplog):
    dataset, tracking = tmp_path / "dataset", ["--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    fit = ["--storage-path", tmp_path / "ray", *tracking]
    assert run_job("ingest", "--source", fashion_subset, "--out", dataset, caplog=caplog)[0] == 0
    old, toy = tmp_path / "models" / "old", tmp_path / "models" / "toy"
    classes = json.loads((dataset / "classes.json").read_text())
    untrained_model(old, classes[: len(classes) // 2], name="old")  # as if trained for no step: enough to encode
    toy_config = _config(tmp_path, "toy", method=toy_method.name, transform={"hidden": 32})
    assert run_job("stats", "--config", toy_config, "--old-model", old, "--dataset", dataset, "--out",
                   tmp_path / "stats.npz", "--embeddings", tmp_path / "embeddings" / "old" / "train",
                   "--threads-per-actor", 1, caplog=caplog)[0] == 0
    code, log = run_job("train", "--config", toy_config, "--dataset", dataset, "--out", toy, "--old-model", old,
                        "--stats", tmp_path / "stats.npz", *fit, caplog=caplog)
    assert code == 0, log[-3000:]
    for model in (old, toy):
        assert run_job("encode", "--model", model, "--dataset", dataset, "--out",
                       tmp_path / "embeddings" / model.name / "test", "--threads-per-actor", 1, caplog=caplog)[0] == 0
    code, log = run_job("score", "--embeddings", tmp_path / "embeddings" / "old" / "test",
                        tmp_path / "embeddings" / "toy" / "test", "--old-model", old, "--artifacts", toy,
                        "--out", tmp_path / "report", *tracking, caplog=caplog)
    assert code == 0, log[-3000:]

    card = read_card(toy)
    assert card.method == "toy_align" and card.transforms == [BACKWARD]
    report = pd.read_csv(tmp_path / "report" / "report.csv").set_index(["query_model", "gallery_model"])
    assert report.loc[("toy.t21", "old"), "transform"] == "T21 of toy (new -> old)"
    assert 0 <= report.loc[("toy.t21", "old"), "top1"] <= 1
    run = MlflowClient(tracking[1]).get_run(card.mlflow_run_id)
    assert run.data.tags["method"] == "toy_align" and run.data.tags["model_id"] == card.id
    assert run.data.metrics["train_align"] > 0 and run.data.metrics["train_boundary"] == 0  # its terms, no others
