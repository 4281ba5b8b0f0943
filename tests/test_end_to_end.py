"""train -> encode -> score on a tiny subset of the real Fashion-MNIST, on a real local Ray."""

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from pipeline.artifacts import read_card
from pipeline.config import pipeline_from_dict
from pipeline.embeddings import read_embeddings
from pipeline.orchestrate import run_pipeline
from tests.reference import reference

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def finished_pipeline(tmp_path_factory, fashion_subset, ray_cluster):
    out = tmp_path_factory.mktemp("e2e")
    cfg = pipeline_from_dict({
        "output_dir": str(out / "run"),
        "data": {"source": str(fashion_subset), "root": str(out / "dataset")},
        "mlflow": {"experiment": "e2e"},
        "train": {"epochs": 2, "batch_size": 64, "cpus_per_worker": 1},
        "encode": {"batch_size": 128, "threads_per_actor": 1},
        "old": {"name": "old", "classes": "first_half"},
        "new": [{"name": "independent", "method": "independent"}, {"name": "bct", "method": "bct"},
                {"name": "lce", "method": "lce_direct"},
                {"name": "lce_bwd", "method": "lce_backward", "transform": {"blocks": 1, "paths": 1, "hidden": 32}}],
    })
    return cfg, run_pipeline(cfg)


def test_report_has_every_pair_and_subset(finished_pipeline):
    cfg, result = finished_pipeline
    table = pd.read_parquet(result.report_dir / "report.parquet")
    assert len(table) == 36  # 5 models and the backward-transformed entry lce_bwd.t21
    assert {"top1_seen", "top1_unseen", "map_unseen", "compatible_map", "update_gain_top1"} <= set(table.columns)
    assert (result.report_dir / "heatmap.png").stat().st_size > 10_000
    transformed = table[(table.query_model == "lce_bwd.t21") & (table.gallery_model == "old")].iloc[0]
    assert transformed["transform"] == "T21 of lce_bwd (new -> old)"
    assert transformed["query_embeddings"].endswith("embeddings/lce_bwd.t21/test")
    assert "old" in result.matrix_text and "lce" in result.matrix_text


def test_every_metric_equals_brute_force(finished_pipeline):
    _, result = finished_pipeline
    table = pd.read_parquet(result.report_dir / "report.parquet")
    for row in table.itertuples():
        query, gallery = read_embeddings(row.query_embeddings), read_embeddings(row.gallery_embeddings)
        expected = reference(query.vectors, query.labels, gallery.vectors, gallery.labels, query.ids, gallery.ids)
        seen = np.isin(query.labels, [0, 1, 2, 3, 4])
        for name, key in (("top1", "top1"), ("top5", "top5"), ("map", "ap"), ("map_at_r", "ap_at_r")):
            assert getattr(row, name) == pytest.approx(np.nanmean(expected[key]), abs=1e-6)
            assert getattr(row, f"{name}_seen") == pytest.approx(np.nanmean(expected[key][seen]), abs=1e-6)
            assert getattr(row, f"{name}_unseen") == pytest.approx(np.nanmean(expected[key][~seen]), abs=1e-6)


def test_cards_reference_statistics_and_old_model(finished_pipeline):
    cfg, _ = finished_pipeline
    models = f"{cfg.output_dir}/models"
    assert read_card(f"{models}/old")["classes"] == ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat"]
    lce = read_card(f"{models}/lce")
    assert lce["stats_file"].endswith("stats/lce.npz") and lce["parent_model"] == "old" and len(lce["classes"]) == 10
    assert read_card(f"{models}/independent")["stats_file"] is None
    assert read_card(f"{models}/lce_bwd")["transforms"] == ["backward_transform"]


def test_mlflow_holds_one_run_per_model_and_one_matrix(finished_pipeline):
    cfg, result = finished_pipeline
    client = MlflowClient(result.tracking_uri)
    experiment = client.get_experiment_by_name("e2e")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in runs if r.data.tags.get("kind") == "train") == ["bct", "independent", "lce", "lce_bwd", "old"]
    [score] = [r for r in runs if r.data.tags.get("kind") == "score"]
    table = pd.read_parquet(result.report_dir / "report.parquet").set_index(["query_model", "gallery_model"])
    assert score.data.metrics["top1/lce/old"] == pytest.approx(table.loc[("lce", "old"), "top1"])
    artifacts = {a.path for a in client.list_artifacts(score.info.run_id)}
    assert {"report.csv", "report.parquet", "heatmap.png"} <= artifacts
    lce_run = next(r for r in runs if r.info.run_name == "lce")
    assert "train_boundary" in lce_run.data.metrics and lce_run.data.params["method"] == "lce_direct"
