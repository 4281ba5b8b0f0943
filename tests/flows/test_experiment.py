"""train -> encode -> score on a tiny subset of the real Fashion-MNIST, on a real local Ray."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from pipeline.atomic import write_text_atomic
from pipeline.data.embeddings import read_embeddings
from pipeline.flows.configs import pipeline_from_dict
from pipeline.flows.experiment import STAGES, Run, run_pipeline
from pipeline.flows.scenarios import plan, run_scenario, write_results
from pipeline.flows.workspace import TIMING_FILE, Workspace
from pipeline.model.artifacts import load_cmc
from pipeline.model.card import read_card
from pipeline.score.criteria import combined_verdict
from pipeline.score.results import load_run, scenario_rows
from tests.reference import reference

pytestmark = pytest.mark.ray
SMALL_T = {"blocks": 1, "paths": 1, "hidden": 32}
# The bidirectional manner trains both transformations (T21 and T12), so it stands for the backward
# and forward manners too; each manner's terms are tested without a cluster (tests/compat).
PLAIN = ["old", "independent", "bct", "lce", "lce_bi", "l2"]


class WithNorms(Workspace):
    """A workspace with one entry more: a file per model."""

    def norms(self, model: str) -> Path:
        return self.root / "norms" / f"{model}.json"


def write_norms(run: Run) -> None:
    """A stage of this test's own, after the others: each model's mean embedding norm on the scored split."""
    for name in run.models:
        vectors = read_embeddings(run.workspace.embeddings(name, run.cfg.score.split)).vectors
        mean_norm = float(np.linalg.norm(vectors, axis=1).mean())
        write_text_atomic(run.workspace.norms(name), json.dumps({"mean_norm": mean_norm}))


@pytest.fixture(scope="module")
def finished_pipeline(tmp_path_factory, fashion_subset, ray_cluster):
    out = tmp_path_factory.mktemp("e2e")
    cfg = pipeline_from_dict({
        "output_dir": str(out / "run"),
        "data": {"source": str(fashion_subset), "root": str(out / "dataset")},
        "mlflow": {"experiment": "e2e"},
        "train": {"epochs": 1, "batch_size": 64, "cpus_per_worker": 1},
        "encode": {"batch_size": 128, "threads_per_actor": 1},
        "old": {"name": "old", "classes": "first_half"},
        "new": [{"name": "independent", "method": "independent"}, {"name": "bct", "method": "bct"},
                {"name": "lce", "method": "lce_direct"},
                {"name": "lce_bi", "method": "lce_bidirectional", "transform": SMALL_T},
                {"name": "l2", "method": "l2"}],
        "cmc": [{"name": "cmc_lce", "method": "lce_cmc", "new_model": "independent", "epochs": 1, "transform": SMALL_T,
                 "cpus_per_worker": 1},
                {"name": "cmc_rbt", "method": "rbt_cmc", "new_model": "independent", "epochs": 1, "transform": SMALL_T,
                 "cpus_per_worker": 1}],
        "score": {"pairs": "counterparts"},
    })
    return cfg, run_pipeline(cfg, stages=(*STAGES, write_norms), workspace=WithNorms.at(cfg.output_dir))


def test_a_new_stage_is_one_flow_function_and_one_workspace_entry(finished_pipeline):
    cfg, _ = finished_pipeline
    workspace = WithNorms.at(cfg.output_dir)
    for name in ["old", *PLAIN[1:]]:
        vectors = read_embeddings(workspace.embeddings(name, "test")).vectors
        written = json.loads(workspace.norms(name).read_text())["mean_norm"]
        assert written == pytest.approx(float(np.linalg.norm(vectors, axis=1).mean()))
    assert sorted(p.stem for p in (workspace.root / "norms").iterdir()) == sorted(PLAIN)  # the models, not CMC fits


def test_report_has_every_counterpart_pair_and_subset(finished_pipeline):
    cfg, result = finished_pipeline
    table = pd.read_parquet(result.report_dir / "report.parquet")
    pairs = set(zip(table.query_model, table.gallery_model))
    assert {(m, m) for m in PLAIN} | {(m, "old") for m in PLAIN} <= pairs
    transformed = {"lce_bi.t21", "cmc_lce.t21", "cmc_rbt.t21"}
    assert {(t, "old") for t in transformed} <= pairs
    for carrier, new in (("lce_bi", "lce_bi"), ("cmc_lce", "independent"), ("cmc_rbt", "independent")):
        assert {(new, f"old.t12.{carrier}"), (f"old.t12.{carrier}", new)} <= pairs
    assert len(table) == len(pairs) == 20  # 6 models with themselves and the old model, 3 T21 entries, 3 T12 galleries both ways
    assert {"top1_seen", "top1_unseen", "map_unseen", "verdict_map", "decision", "update_gain_top1"} <= set(table.columns)
    assert (result.report_dir / "heatmap.png").stat().st_size > 10_000
    row = table[(table.query_model == "lce_bi.t21") & (table.gallery_model == "old")].iloc[0]
    assert row["transform"] == "T21 of lce_bi (new -> old)"
    assert row["query_embeddings"].endswith("embeddings/lce_bi.t21/test")
    row = table[(table.query_model == "independent") & (table.gallery_model == "old.t12.cmc_lce")].iloc[0]
    assert row["transform"] == "T12 of lce_cmc cmc_lce of independent (old -> new)"
    assert "old" in result.matrix_text and "lce" in result.matrix_text


def test_cmc_trains_only_its_transformations(finished_pipeline):
    cfg, result = finished_pipeline
    models = f"{cfg.output_dir}/models"
    card = read_card(f"{models}/cmc_lce")
    assert card.kind == "cmc" and card.old_model.name == "old" and card.new_model.name == "independent"
    transforms, _ = load_cmc(f"{models}/cmc_lce")
    assert set(transforms) == {"backward_transform", "forward_transform"}
    # Neither model changed: their weights still equal the copies logged to MLflow when they were trained.
    client = MlflowClient(result.tracking_uri)
    for model in ("old", "independent"):
        logged = client.download_artifacts(read_card(f"{models}/{model}").mlflow_run_id, "model/model.pt",
                                           str(Path(cfg.output_dir) / f"logged-{model}"))
        assert Path(logged).read_bytes() == Path(f"{models}/{model}/model.pt").read_bytes()
    runs = {r.info.run_name: r for r in client.search_runs([client.get_experiment_by_name("e2e").experiment_id])}
    assert runs["cmc_lce"].data.tags["kind"] == "cmc" and "train_align_21" in runs["cmc_lce"].data.metrics
    assert runs["cmc_rbt"].data.metrics["train_regression"] > 0


def test_results_rows_are_report_cells(finished_pipeline):
    cfg, result = finished_pipeline
    run = load_run(result.report_dir)
    table, rows = run.table, scenario_rows(run, cfg).rows.set_index("entry")
    cells = table.set_index(["query_model", "gallery_model"])
    assert rows.loc["cmc_lce.t21", "method"] == "lce_cmc"
    assert rows.loc["cmc_lce.t21", "new_old_top1"] == cells.loc[("cmc_lce.t21", "old"), "top1"]
    assert rows.loc["cmc_lce.t21", "new_new_top1"] == cells.loc[("independent", "independent"), "top1"]
    assert rows.loc["old.t12.lce_bi", "new_old_map_unseen"] == cells.loc[("lce_bi", "old.t12.lce_bi"), "map_unseen"]
    assert rows.loc["old.t12.lce_bi", "old_new_top1"] == cells.loc[("old.t12.lce_bi", "lce_bi"), "top1"]
    # each seed's verdicts come from the pairs' per-query values: the report's own intervals, recomputed
    assert rows.loc["cmc_lce.t21", "criterion"] == combined_verdict(
        cells.loc[("cmc_lce.t21", "old"), [f"verdict_{m}" for m in ("top1", "map")]].tolist())


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
    assert read_card(f"{models}/old").classes == ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat"]
    lce = read_card(f"{models}/lce")
    assert lce.stats_file.endswith("stats/lce.npz") and lce.parent_model == "old" and len(lce.classes) == 10
    assert read_card(f"{models}/independent").stats_file is None
    assert read_card(f"{models}/lce_bi").transforms == ["backward_transform", "forward_transform"]
    # The forward manners read the old model's train-split embeddings by id; the others do not.
    assert read_card(f"{models}/lce_bi").old_features == f"{cfg.output_dir}/embeddings/old/train"
    assert lce.old_features is None


def test_mlflow_holds_one_run_per_model_and_one_matrix(finished_pipeline):
    cfg, result = finished_pipeline
    client = MlflowClient(result.tracking_uri)
    experiment = client.get_experiment_by_name("e2e")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in runs if r.data.tags.get("kind") == "train") == sorted(PLAIN)
    [score] = [r for r in runs if r.data.tags.get("kind") == "score"]
    table = pd.read_parquet(result.report_dir / "report.parquet").set_index(["query_model", "gallery_model"])
    assert score.data.metrics["top1/lce/old"] == pytest.approx(table.loc[("lce", "old"), "top1"])
    artifacts = {a.path for a in client.list_artifacts(score.info.run_id)}
    assert {"report.csv", "report.parquet", "heatmap.png", "verdicts.md"} <= artifacts
    # Each criterion cell with its paired interval and verdict, overall and per query subset.
    for name in ("top1", "map", "top1_seen", "map_unseen"):
        cell = table.loc[("lce", "old")]
        assert score.data.tags[f"verdict_{name}/lce/old"] == cell[f"verdict_{name}"]
        assert score.data.metrics[f"delta_{name}_low/lce/old"] == pytest.approx(cell[f"delta_{name}_low"])
        assert cell[f"delta_{name}_low"] <= cell[f"delta_{name}"] <= cell[f"delta_{name}_high"]
    verdicts = (result.report_dir / "verdicts.md").read_text()
    assert f"| lce | old | top1 | {100 * table.loc[('lce', 'old'), 'delta_top1']:+.2f} [" in verdicts
    lce_run = next(r for r in runs if r.info.run_name == "lce")
    assert "train_boundary" in lce_run.data.metrics and lce_run.data.params["method"] == "lce_direct"


def test_results_tables_are_assembled_from_a_finished_run(finished_pipeline, tmp_path):
    cfg, _ = finished_pipeline
    root = tmp_path / "results"
    root.mkdir()
    (root / "e2e").symlink_to(cfg.output_dir)
    (Path(cfg.output_dir) / TIMING_FILE).write_text('{"seconds": 60, "commit": "abc1234", "date": "2026-12-01"}')
    scenario = tmp_path / "e2e.yaml"
    scenario.write_text(yaml.safe_dump(cfg.model_dump(mode="json", exclude={"output_dir"})))
    [(path, reuse)] = plan([scenario], root, [], reuse=False)  # finished: read, not run
    result = run_scenario(path, {}, root, reuse, None)
    csv_path = write_results([result], tmp_path / "results.md", "test data")
    text = (tmp_path / "results.md").read_text()
    assert "run at commit abc1234 on 2026-12-01" in text and "mean over seeds ± their sample standard deviation" in text
    folded = pd.read_csv(csv_path).set_index("entry")
    report = pd.read_parquet(Path(cfg.output_dir) / "report" / "report.parquet").set_index(["query_model", "gallery_model"])
    assert folded.loc["lce", "new_old_top1"] == pytest.approx(report.loc[("lce", "old"), "top1"])
