"""Lineage metrics by hand, and a real lineage: trained on a local Ray, registered in a real
MLflow server on 127.0.0.1, reported, and read back through the server's REST API."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from pipeline.compat.methods import check_fits
from pipeline.config import ConfigError, LineageConfig
from pipeline.data.embeddings import embeddings_table, open_embeddings, read_embeddings, write_embeddings
from pipeline.flows.configs import load_lineage_config
from pipeline.lineage.backfill import backfill_curve, curve_area, share_to_reach, stratified_order
from pipeline.lineage.metrics import lower_triangle_summary, verdict
from pipeline.lineage.selection import Candidate, choose_order, choose_route
from pipeline.score.criteria import Decision, update_gain
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
        per_query = score_queries(query, labels, ids, in_memory(ids, labels, gallery), len(gallery), topk=(1,))
        return {"top1": per_query["top1"], "map": per_query["ap"]}

    order = np.random.default_rng(1).permutation(200)
    curve, areas = backfill_curve(parent, new, order, score, steps=4)
    assert list(curve.share) == [0, 0.25, 0.5, 0.75, 1.0]
    unit_parent, unit_new = (v / np.linalg.norm(v, axis=1, keepdims=True) for v in (parent, new))
    for row, reencoded in enumerate((0, 50, 100, 150, 200)):  # every point, by brute force on its own gallery
        gallery = unit_parent.copy()
        gallery[order[:reencoded]] = unit_new[order[:reencoded]]
        expected = summarize(per_query_metrics(query, labels, gallery, labels, ids, ids, topk=(1,)))
        for metric in ("top1", "map"):
            assert curve[metric].iloc[row] == pytest.approx(expected[metric]), (row, metric)
    assert curve["top1"].iloc[0] != curve["top1"].iloc[2] != curve["top1"].iloc[4]  # the points differ here
    for metric in ("top1", "map"):  # each query's area: their mean is the curve's area
        assert len(areas[metric]) == 200 and np.nanmean(areas[metric]) == pytest.approx(curve_area(curve, metric))


def test_stratified_order_reencodes_every_class_at_the_same_pace():
    centers = np.eye(3)
    vectors = np.repeat(centers, [60, 30, 10], axis=0) + 0.01
    order = stratified_order(vectors, centers, seed=1)
    assert sorted(order.tolist()) == list(range(100))
    nearest = np.repeat([0, 1, 2], [60, 30, 10])
    for share in (0.1, 0.5):
        first = nearest[order[: int(share * 100)]]
        assert np.bincount(first, minlength=3) / np.array([60, 30, 10]) == pytest.approx(share, abs=0.06)


def test_verdicts_are_the_chosen_routes_intervals_in_three_words():
    cells = {("p", "p"): {"top1": 0.80, "map": 0.50},
             ("n", "p"): {"top1": 0.81, "map": 0.52, "verdict_top1": "met", "verdict_map": "not met"},
             ("n", "p.t12.n"): {"top1": 0.85, "map": 0.60, "verdict_top1": "met", "verdict_map": "met"}}
    decide = lambda query, gallery, forward=False: verdict("n", "p", lambda q, g: cells.get((q, g)),  # noqa: E731
                                                           query, gallery, forward)
    assert decide("n", "p").decision is Decision.BACKFILL and decide("n", "p").statement == "backfill"
    forward = decide("n", "p.t12.n", forward=True)
    assert forward.decision is Decision.SHIP and forward.route == "n -> p.t12.n" and forward.numbers["parent_map"] == 0.50
    assert forward.statement == "ship, the forward transformation applied to the stored gallery"
    cells[("n", "p")].update({"delta_top1_low": 0.004, "delta_top1_high": 0.016, "delta_map_low": -0.002,
                              "delta_map_high": 0.04, "verdict_map": "within noise"})
    noisy = decide("n", "p")  # the estimates are above the parent's, one interval holds 0: no ship
    assert noisy.decision is Decision.INCONCLUSIVE and noisy.within_noise == ("map",)
    assert noisy.statement == ("inconclusive (within noise on map): score more queries to settle it, or backfill")
    assert noisy.numbers["delta_map_low"] == -0.002
    cells[("n", "p")]["verdict_map"] = "met"
    assert decide("n", "p").statement == "ship, no backfill"
    assert decide("n", "p.t21").decision is Decision.BACKFILL  # a route not scored is not judged: no ship


def test_the_route_is_one_that_needs_no_backfill_where_one_ships_on_the_selection_rows():
    direct, t21, t12 = (Candidate(route, q, g) for route, q, g in (("direct", "n", "p"), ("T21", "n.t21", "p"),
                                                                  ("T12", "n", "p.t12.n")))
    row = lambda verdicts, low: {"top1": 0.8, "map": 0.5, **{f"verdict_{m}": v for m, v in zip(("top1", "map"),  # noqa: E731
                                                                                             verdicts)},
                                 "delta_top1_low": low, "delta_map_low": low}
    rows = {direct.pair: row(("met", "within noise"), -0.01), t21.pair: row(("met", "met"), 0.01),
            t12.pair: row(("met", "met"), 0.05)}
    assert choose_route([direct, t21, t12], rows, 100).candidate == t21  # T12 is better, but needs the gallery mapped
    rows[t21.pair] = row(("met", "not met"), -0.02)
    assert choose_route([direct, t21, t12], rows, 100).candidate == t12
    rows[t12.pair] = row(("not met", "not met"), -0.03)
    chosen = choose_route([direct, t21, t12], rows, 100)
    assert chosen.candidate == direct and "n -> p inconclusive; n.t21 -> p backfill" in chosen.reason


def test_an_order_is_recommended_only_where_it_beats_random_and_loses_on_no_metric():
    rng = np.random.default_rng(4)
    random = {f"random-{i}": {"top1": rng.normal(0.80, 0.1, 3000), "map": rng.normal(0.60, 0.1, 3000)}
              for i in range(3)}
    base = {m: np.mean([r[m] for r in random.values()], axis=0) for m in ("top1", "map")}
    better_map = {"top1": base["top1"] + rng.normal(0, 0.01, 3000), "map": base["map"] + 0.02}
    worse_top1 = {"top1": base["top1"] - 0.02, "map": base["map"] + 0.05}
    chosen = choose_order({**random, "stratified": better_map, "predicted": worse_top1}, list(random), ["top1", "map"])
    assert chosen.order == "stratified"  # the predicted order's larger mAP area comes with a top-1 loss
    assert chosen.against_random["predicted"]["top1"].verdict == "not met"
    level = choose_order({**random, "predicted": {m: base[m] + rng.normal(0, 0.05, 3000) for m in base}},
                         list(random), ["top1", "map"])
    assert level.order == "random" and "no order beats random" in level.reason  # within noise is not a win


def test_lineage_config_is_checked():
    first_follows = LineageConfig.model_validate({"models": [{"name": "a", "method": "lce_direct"},
                                                             {"name": "b", "method": "lce_direct"}]})
    with pytest.raises(ConfigError, match="l.yaml: key 'models.0.method': 'lce_direct' needs an old model"):
        check_fits(first_follows.fits(), "l.yaml")
    with pytest.raises(ConfigError, match="key 'models.1.method': 'independent' has no compatibility"):
        check_fits(LineageConfig.model_validate({"models": [{"name": "a"}, {"name": "b"}]}).fits(), "l.yaml")
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


def _lineage_config(out, fashion_subset, mlflow_server) -> LineageConfig:
    return LineageConfig.model_validate({
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


@pytest.fixture(scope="module")
def lineage_report(tmp_path_factory, fashion_subset, ray_cluster, mlflow_server):
    from pipeline.flows.lineage import run_lineage

    out = tmp_path_factory.mktemp("lineage")
    return run_lineage(_lineage_config(out, fashion_subset, mlflow_server)), mlflow_server


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
    assert all(v.decision in tuple(Decision) for v in report.verdicts)
    for v in report.verdicts:  # the route and the order were chosen on the training split's selection rows
        assert v.chosen.startswith("chosen on ") and "selection rows of the training split" in v.chosen
        assert v.backfill_order in {"random", "stratified", "predicted"} and "selection rows" in v.order_chosen
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
        chosen = next(v.backfill_order for v in report.verdicts if v.model == model)
        assert len(rows) == 3 * 6 and set(rows.order) == {chosen}
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
    assert tags["decision/v2"] == report.verdicts[0].decision and tags["decision/v2"] in {"ship", "inconclusive",
                                                                                          "backfill"}
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
            "verdicts.md", "indexes.csv", "indexes.png"} <= artifacts

    versions = _get(url, "/api/2.0/mlflow/model-versions/search", filter="name='tiny-lineage'")["model_versions"]
    parents = {v["version"]: {t["key"]: t["value"] for t in v.get("tags", [])}.get("parent_version", "") for v in versions}
    assert parents == {"1": "", "2": "1", "3": "2"}
    with urllib.request.urlopen(f"{url}/", timeout=30) as response:  # the UI's page is served
        assert response.status == 200 and b"<html" in response.read().lower()


@pytest.mark.ray
def test_the_route_and_order_are_chosen_without_reading_the_scored_split(lineage_report, fashion_subset, tmp_path):
    """The same lineage reported again with the test split's labels shuffled: its numbers change,
    the routes and orders chosen (on the training split) do not."""
    import pyarrow.parquet as pq

    from pipeline.flows.lineage import run_lineage_report
    from pipeline.flows.workspace import Workspace
    from pipeline.lineage.metrics import LineageModel

    report, url = lineage_report
    registry = report.report_dir.parent
    shutil.copytree(registry / "embeddings", tmp_path / "embeddings")
    for part in (tmp_path / "embeddings").glob("v?/test/*.parquet"):
        table = pq.read_table(part)
        labels = np.random.default_rng(0).permutation(table.column("label").to_numpy())
        pq.write_table(table.set_column(table.schema.get_field_index("label"), "label",
                                        pa.array(labels, table.schema.field("label").type)), part)
    models = [LineageModel(name, registry / "models" / name, parent) for name, parent in
              (("v1", None), ("v2", "v1"), ("v3", "v2"))]
    cfg = _lineage_config(registry.parent, fashion_subset, url)
    again = run_lineage_report(models, cfg.data.root, Workspace.at(tmp_path), Workspace.at(tmp_path).context(cfg.mlflow),
                               encode=cfg.encode, score=cfg.score,
                               backfill_steps=cfg.backfill_steps, indexes=cfg.indexes)
    assert not np.allclose(again.table.top1.to_numpy(), report.table.top1.to_numpy())  # the labels were read
    for first, second in zip(report.verdicts, again.verdicts):
        assert (first.route, first.chosen, first.backfill_order, first.order_chosen) == \
            (second.route, second.chosen, second.backfill_order, second.order_chosen)
