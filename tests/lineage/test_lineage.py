"""Lineage metrics by hand, and a real lineage: trained on a local Ray, registered in a real
MLflow server on 127.0.0.1, reported, and read back through the server's REST API."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import numpy as np
import pandas as pd
import pytest

from pipeline.config import LineageConfig, load_lineage_config
from pipeline.data.embeddings import embeddings_table, open_embeddings, read_embeddings, write_embeddings
from pipeline.lineage.backfill import backfill_curve, curve_area, share_to_reach, stratified_order
from pipeline.lineage.files import recommended_order
from pipeline.lineage.metrics import BACKFILL, FORWARD, NO_BACKFILL, lower_triangle_summary, verdict
from pipeline.score.criteria import update_gain
from pipeline.score.retrieval import in_memory, per_query_metrics, score_queries, summarize
from tests.reference import reference


def test_ac_and_am_over_the_lower_triangle_with_a_strict_tie_rule():
    matrix = np.array([[0.80, 0.10, 0.20],
                       [0.80, 0.85, 0.30],    # C[1][0] ties C[0][0]: not compatible
                       [0.82, 0.86, 0.90]])   # both above their gallery's own value
    ac, am = lower_triangle_summary(matrix)
    assert ac == pytest.approx(2 / 3)
    assert am == pytest.approx((0.80 + 0.80 + 0.85 + 0.82 + 0.86 + 0.90) / 6)  # the diagonal counts in AM
    matrix[2, 1] = np.nan  # a pair of two dimensions is not scored: left out of both
    assert lower_triangle_summary(matrix) == pytest.approx((0.5, (0.80 + 0.80 + 0.85 + 0.82 + 0.90) / 5))
    assert np.isnan(lower_triangle_summary(np.array([[0.5]]))[0])


def test_update_gain_and_backfill_share():
    assert update_gain(0.85, 0.80, 0.90) == pytest.approx(0.5)
    curve = pd.DataFrame({"share": [0, 0.5, 1.0], "top1": [0.7, 0.8, 0.9], "map": [0.5, 0.55, 0.7]})
    assert curve_area(curve, "top1") == pytest.approx(0.8)
    assert share_to_reach(curve, {"top1": 0.75, "map": 0.52}) == 0.5
    assert np.isnan(share_to_reach(curve, {"top1": 0.95}))


def test_backfill_curve_runs_from_new_old_to_new_new():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 200)
    ids = np.array([f"i{k}" for k in range(200)], dtype=object)
    parent = rng.normal(size=(200, 8)) + labels[:, None]
    new = rng.normal(size=(200, 8)) + 2 * labels[:, None]
    query = new

    def score(gallery):
        return summarize(score_queries(query, labels, ids, in_memory(ids, labels, gallery), len(gallery), topk=(1,)))

    order = np.random.default_rng(1).permutation(200)
    curve = backfill_curve(parent, new, order, score, steps=4)
    assert list(curve.share) == [0, 0.25, 0.5, 0.75, 1.0]
    unit_parent, unit_new = (v / np.linalg.norm(v, axis=1, keepdims=True) for v in (parent, new))
    for row, reencoded in enumerate((0, 50, 100, 150, 200)):  # every point, by brute force on its own gallery
        gallery = unit_parent.copy()
        gallery[order[:reencoded]] = unit_new[order[:reencoded]]
        expected = summarize(per_query_metrics(query, labels, gallery, labels, ids, ids, topk=(1,)))
        for metric in ("top1", "map"):
            assert curve[metric].iloc[row] == pytest.approx(expected[metric]), (row, metric)
    assert curve["top1"].iloc[0] != curve["top1"].iloc[2] != curve["top1"].iloc[4]  # the points differ here


def test_stratified_order_reencodes_every_class_at_the_same_pace():
    centers = np.eye(3)
    vectors = np.repeat(centers, [60, 30, 10], axis=0) + 0.01
    order = stratified_order(vectors, centers, seed=1)
    assert sorted(order.tolist()) == list(range(100))
    nearest = np.repeat([0, 1, 2], [60, 30, 10])
    for share in (0.1, 0.5):
        first = nearest[order[: int(share * 100)]]
        assert np.bincount(first, minlength=3) / np.array([60, 30, 10]) == pytest.approx(share, abs=0.06)


def test_verdicts():
    cells = {("p", "p"): {"top1": 0.80, "map": 0.50}, ("n", "p"): {"top1": 0.81, "map": 0.49},
             ("n", "p.t12.n"): {"top1": 0.85, "map": 0.60}}
    decide = lambda **routes: verdict("n", "p", lambda q, g: cells.get((q, g)), **routes)  # noqa: E731
    assert decide().decision == BACKFILL                     # top-1 passes, mAP does not
    forward = decide(t12_gallery="p.t12.n")
    assert forward.decision == FORWARD and forward.route == "n -> p.t12.n" and forward.numbers["parent_map"] == 0.50
    cells[("n", "p")] = {"top1": 0.81, "map": 0.51}
    assert decide(t12_gallery="p.t12.n").decision == NO_BACKFILL
    # With the report's paired intervals, a decision resting on an interval that holds 0 says so.
    cells[("n", "p")].update({"delta_top1_low": 0.004, "delta_top1_high": 0.016, "verdict_top1": "met",
                              "delta_map_low": -0.002, "delta_map_high": 0.02, "verdict_map": "within noise"})
    noisy = decide()
    assert noisy.decision == NO_BACKFILL and noisy.within_noise == ("map",)
    assert noisy.statement == "ship, no backfill (within noise on map)" and noisy.numbers["delta_map_low"] == -0.002


def test_lineage_config_is_checked():
    with pytest.raises(ValueError, match="models.0.method 'lce_direct' needs an old model"):
        LineageConfig.model_validate({"models": [{"name": "a", "method": "lce_direct"}, {"name": "b", "method": "lce_direct"}]})
    with pytest.raises(ValueError, match="models.1 \\(b\\): method 'independent'"):
        LineageConfig.model_validate({"models": [{"name": "a"}, {"name": "b", "method": "independent"}]})
    cfg = load_lineage_config("configs/lineage.yaml")
    assert [m.name for m in cfg.models] == ["v1", "v2", "v3"]
    assert cfg.models[1].data_fraction == 0.5 and cfg.models[2].data_fraction == 1.0  # train defaults, then overrides


def test_streamed_files_score_like_the_set_in_memory(tmp_path):
    rng = np.random.default_rng(2)
    vectors, labels = rng.normal(size=(250, 8)).astype(np.float32), rng.integers(0, 3, 250)
    ids = [f"r{k}" for k in range(250)]
    for part, start in enumerate(range(0, 250, 100)):
        rows = slice(start, start + 100)
        write_embeddings(tmp_path / f"part-{part:05d}.parquet",
                         embeddings_table(ids[rows], labels[rows], vectors[rows], "m-1", "m", ["a", "b", "c"]))
    files = open_embeddings(tmp_path)
    assert len(files) == 250 and [len(s.ids) for s in files.shards(64)] == [64, 36, 64, 36, 50]
    loaded = read_embeddings(tmp_path)
    streamed = score_queries(loaded.vectors, loaded.labels, loaded.ids, lambda: files.shards(64), len(files))
    whole = per_query_metrics(loaded.vectors, loaded.labels, loaded.vectors, loaded.labels, loaded.ids, loaded.ids)
    for key in whole:
        assert np.allclose(streamed[key], whole[key]), key


# --- a real lineage, a real MLflow server ---------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """``mlflow server`` on 127.0.0.1 with a SQLite store and a local artifact root."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}", "--artifacts-destination", str(folder / "artifacts")],
        stdout=open(folder / "server.log", "w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if process.poll() is not None or time.time() > deadline:
            process.kill()
            pytest.fail(f"mlflow server did not start: {(folder / 'server.log').read_text()[-2000:]}")
        time.sleep(1)
    yield url
    process.terminate()
    process.wait(timeout=30)


def _get(url: str, path: str, **query) -> dict:
    with urllib.request.urlopen(f"{url}{path}?{urllib.parse.urlencode(query)}", timeout=30) as response:
        return json.loads(response.read())


def _post(url: str, path: str, body: dict) -> dict:
    request = urllib.request.Request(f"{url}{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def lineage_report(tmp_path_factory, fashion_subset, ray_cluster, mlflow_server):
    from pipeline.lineage.chain import run_lineage

    out = tmp_path_factory.mktemp("lineage")
    cfg = LineageConfig.model_validate({
        "output_dir": str(out), "registered_model": "tiny-lineage",
        "data": {"source": str(fashion_subset), "root": str(out / "dataset")},
        "mlflow": {"tracking_uri": mlflow_server, "experiment": "lineage-test"},
        "encode": {"batch_size": 128, "threads_per_actor": 1}, "backfill_steps": 4,
        "indexes": {"steps": 2, "latency_queries": 20},
        "models": [
            {"name": "v1", "method": "independent", "classes": ["T-shirt/top", "Trouser", "Pullover", "Dress"],
             "epochs": 1, "batch_size": 64, "cpus_per_worker": 1},
            {"name": "v2", "method": "lce_direct", "classes": "first_half", "epochs": 1, "batch_size": 64,
             "cpus_per_worker": 1},
            {"name": "v3", "method": "lce_forward", "epochs": 1, "batch_size": 64, "cpus_per_worker": 1,
             "transform": {"blocks": 1, "paths": 1, "hidden": 32}},
        ]})
    return run_lineage(cfg), mlflow_server


@pytest.mark.ray
def test_lineage_matrix_ac_am_and_backfill_match_brute_force(lineage_report):
    report, _ = lineage_report
    table = report.table.set_index(["query_model", "gallery_model"])
    names = ["v1", "v2", "v3"]
    sets = {n: read_embeddings(table.loc[(n, n), "query_embeddings"]) for n in names}
    brute = {}
    for q in names:
        for g in names:
            expected = reference(sets[q].vectors, sets[q].labels, sets[g].vectors, sets[g].labels, sets[q].ids, sets[g].ids)
            brute[(q, g)] = {"top1": expected["top1"].mean(), "map": np.nanmean(expected["ap"])}
            for metric in ("top1", "map"):
                assert table.loc[(q, g), metric] == pytest.approx(brute[(q, g)][metric], abs=1e-9), (q, g, metric)
    summary = report.summary.set_index("metric")
    for metric in ("top1", "map"):
        lower = [(1, 0), (2, 0), (2, 1)]
        cells = [brute[(names[i], names[j])][metric] for i, j in lower]
        own = [brute[(names[j], names[j])][metric] for _, j in lower]
        assert summary.loc[metric, "AC"] == pytest.approx(np.mean([c > o for c, o in zip(cells, own)]))
        assert summary.loc[metric, "AM"] == pytest.approx(np.mean(cells + [brute[(n, n)][metric] for n in names]))
    # the forward-trained v3 adds v2's gallery through its T12, judged against v2/v2
    assert ("v3", "v2.t12.v3") in table.index
    backfill = pd.read_csv(report.report_dir / "backfill.csv")
    assert set(backfill.order) == {"random", "stratified", "predicted", "oracle"}
    for (model, _), curve in backfill.groupby(["model", "order"]):
        parent = {"v2": "v1", "v3": "v2"}[model]
        for metric in ("top1", "map"):
            assert curve[metric].iloc[0] == pytest.approx(table.loc[(model, parent), metric])
            assert curve[metric].iloc[-1] == pytest.approx(table.loc[(model, model), metric])
    assert [v.model for v in report.verdicts] == ["v2", "v3"]
    assert all(v.decision in (NO_BACKFILL, FORWARD, BACKFILL) for v in report.verdicts)
    for v in report.verdicts:  # the deciding pair's intervals reach the verdict and the summary
        query, gallery = v.route.split(" -> ")
        assert v.numbers["delta_top1_low"] == pytest.approx(table.loc[(query, gallery), "delta_top1_low"])
        assert v.within_noise == tuple(m for m in ("top1", "map")
                                       if table.loc[(query, gallery), f"verdict_{m}"] == "within noise")
        assert f"**{v.statement}**" in (report.report_dir / "summary.md").read_text()
    for v in report.verdicts:  # each order's share for 95 % of the gain: one of the curve's shares
        shares = {key: value for key, value in v.numbers.items() if key.startswith("share_for_95pct_gain/")}
        assert set(shares) == {f"share_for_95pct_gain/{o}" for o in ("random", "stratified", "predicted", "oracle")}
        assert all(value in {0.0, 0.25, 0.5, 0.75, 1.0} or np.isnan(value) for value in shares.values())
        assert f"- {v.model}: re-encode {v.model}'s parent gallery in the **" in (report.report_dir / "summary.md"
                                                                                  ).read_text()
    assert (report.report_dir / "heatmap_top1.png").stat().st_size > 5_000
    indexes = pd.read_csv(report.report_dir / "indexes.csv")  # the gallery mixed in the recommended order
    for model, rows in indexes.groupby("model"):
        parent = {"v2": "v1", "v3": "v2"}[model]
        flat = rows[rows["index"] == "flat"].set_index("share")
        assert flat.loc[0.0, "top1"] == pytest.approx(table.loc[(model, parent), "top1"])
        assert flat.loc[1.0, "top1"] == pytest.approx(table.loc[(model, model), "top1"])
        assert len(rows) == 3 * 6 and set(rows.order) == {recommended_order(backfill, model)[0]}
    assert "Which index settings hold recall (recall@k >= 0.95 at every share):" in (report.report_dir /
                                                                                    "summary.md").read_text()


@pytest.mark.ray
def test_mlflow_server_holds_the_report_run_its_pairs_and_the_registry(lineage_report):
    report, url = lineage_report
    run = _get(url, "/api/2.0/mlflow/runs/get", run_id=report.run_id)["run"]
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
    assert params["registered_model"] == "tiny-lineage" and params["models"] == "v1,v2,v3"
    assert tags["verdict/v2"] == report.verdicts[0].statement and "verdict/v3" in tags
    assert metrics["top1/v2/v1"] == pytest.approx(report.table.set_index(["query_model", "gallery_model"]).loc[("v2", "v1"), "top1"])
    assert {"AC_top1", "AM_top1", "AC_map", "AM_map"} <= set(metrics)
    assert any(key.startswith("backfill_area/top1/v2/") for key in metrics)
    history = _get(url, "/api/2.0/mlflow/metrics/get-history", run_id=report.run_id,
                   metric_key="index_recall_at_k/v2/ivf-pq/parent")["metrics"]
    assert sorted(m["step"] for m in history) == [0, 50, 100]  # the recall curve over the re-encoded %

    experiment = run["info"]["experiment_id"]
    children = _post(url, "/api/2.0/mlflow/runs/search", {
        "experiment_ids": [experiment], "filter": f"tags.mlflow.parentRunId = '{report.run_id}'", "max_results": 100})["runs"]
    assert len(children) == len(report.table)
    params_of = [{p["key"]: p["value"] for p in child["data"]["params"]} for child in children]
    assert {(p["query_model"], p["gallery_model"]) for p in params_of} == set(zip(report.table.query_model,
                                                                                  report.table.gallery_model))
    assert {p["transform"] for p in params_of} >= {"none", "T12 of v3 (old -> new)"}

    artifacts = {f["path"] for f in _get(url, "/api/2.0/mlflow/artifacts/list", run_id=report.run_id)["files"]}
    assert {"heatmap_top1.png", "heatmap_map.png", "backfill.png", "summary.md", "report.csv", "verdicts.json",
            "indexes.csv", "indexes.png"} <= artifacts

    versions = _get(url, "/api/2.0/mlflow/model-versions/search", filter="name='tiny-lineage'")["model_versions"]
    parents = {v["version"]: {t["key"]: t["value"] for t in v.get("tags", [])}.get("parent_version", "") for v in versions}
    assert parents == {"1": "", "2": "1", "3": "2"}
    with urllib.request.urlopen(f"{url}/", timeout=30) as response:  # the UI's page is served
        assert response.status == 200 and b"<html" in response.read().lower()
