"""jobs.score on a team's own embeddings files, with no artifact of this project: the label map and
the old model's classes given on the command line."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.jobs.helpers import run_job

CLASSES = ["cat", "dog", "fox"]


def _write(path, ids, labels, vectors) -> None:
    pq.write_table(pa.table({"id": ids, "label": labels, "embedding": [v.tolist() for v in vectors]}), path)


def test_external_sets_are_scored_with_the_old_model_named_and_its_classes_given(tmp_path, caplog):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 300)
    centers = rng.normal(size=(3, 8))  # classes that overlap: some queries flip
    old = centers[labels] + rng.normal(size=(300, 8))
    new = old + 0.3 * rng.normal(size=(300, 8))  # a new model near the old space: compatible
    ids = [f"img-{i}" for i in range(300)]
    _write(tmp_path / "old.parquet", ids, [CLASSES[label] for label in labels], old)  # names as labels
    _write(tmp_path / "new.parquet", ids, labels.tolist(), new)                       # indices as labels
    (tmp_path / "classes.json").write_text(json.dumps(CLASSES))
    code, logged = run_job("score", "--external", f"old={tmp_path / 'old.parquet'}", f"new={tmp_path / 'new.parquet'}",
                           "--classes", tmp_path / "classes.json", "--old", "old", "--old-classes", "cat", "dog",
                           "--max-flip-rate", 0.5, "--out", tmp_path / "report",
                           "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", caplog=caplog)
    assert code == 0, logged
    report = pd.read_parquet(tmp_path / "report" / "report.parquet").set_index(["query_model", "gallery_model"])
    assert set(report.index) == {("old", "old"), ("old", "new"), ("new", "old"), ("new", "new")}
    assert {"top1_seen", "top1_unseen"} <= set(report.columns)  # seen: cat and dog, unseen: fox
    assert report.loc[("new", "old"), "num_queries"] == 300

    # negative flips: in the report, per class, in verdicts.md, as a heat map and in the MLflow run
    rate = report.loc[("new", "old"), "negative_flip_rate"]
    assert 0 < rate <= 0.5 and bool(report.loc[("new", "old"), "flips_within_limit"])
    per_class = pd.read_csv(tmp_path / "report" / "flips_per_class.csv")
    new_old = per_class[(per_class.query_model == "new") & (per_class.gallery_model == "old")]
    assert new_old["class"].tolist() == CLASSES and new_old["queries"].sum() == 300
    assert new_old["negative_flips"].sum() == round(rate * 300)
    assert f"| new | old | {100 * rate:.2f} | " in (tmp_path / "report" / "verdicts.md").read_text()
    assert "| yes |" in (tmp_path / "report" / "verdicts.md").read_text()  # within the limit of 0.5
    assert (tmp_path / "report" / "flips.png").stat().st_size > 0
    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("compat-embed").experiment_id])[0]
    assert run.data.metrics["negative_flip_rate/new/old"] == pytest.approx(rate)
    artifacts = {artifact.path for artifact in client.list_artifacts(run.info.run_id)}
    assert {"flips.png", "flips_per_class.csv"} <= artifacts


def test_an_external_label_outside_the_label_map_is_refused_naming_the_file_and_row(tmp_path, caplog):
    _write(tmp_path / "old.parquet", ["a", "b"], ["cat", "wolf"], np.eye(2, 4))
    (tmp_path / "classes.json").write_text(json.dumps(CLASSES))
    code, logged = run_job("score", "--external", f"old={tmp_path / 'old.parquet'}", "--classes",
                           tmp_path / "classes.json", "--old", "old", "--out", tmp_path / "report", caplog=caplog)
    assert code == 2
    assert "old.parquet: row 'b': label 'wolf' is neither a class of the label map" in logged


def test_score_refuses_nothing_to_score_and_old_classes_beside_an_old_models_artifact(tmp_path, caplog):
    code, logged = run_job("score", "--old", "old", "--out", tmp_path / "report", caplog=caplog)
    assert code == 2 and "nothing to score: give embeddings folders (--embeddings) or a team's files" in logged
    code, logged = run_job("score", "--old-model", tmp_path / "old", "--old-classes", "cat", "--embeddings",
                           tmp_path / "e", "--out", tmp_path / "report", caplog=caplog)
    assert code == 2 and "--old-classes goes with --old: with --old-model the classes are the artifact's" in logged
