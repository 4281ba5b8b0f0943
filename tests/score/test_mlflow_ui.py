"""The compatibility run as a person opens it: a real `mlflow server` on 127.0.0.1, the run written
by the real `jobs.score`, and its pages rendered by headless Chromium (Debian's `chromium`, which
`make test` installs when it runs as root)."""

from __future__ import annotations

import html
import re
import shutil
import subprocess
import urllib.request

import pytest
from mlflow.tracking import MlflowClient

from pipeline.tracking import DESCRIPTION_TAG, EXPERIMENT_KIND, ui_link
from tests.jobs.helpers import run_job
from tests.jobs.test_bad_input import synthetic_embeddings
from tests.mlflow_server import MlflowServer

CHROMIUM = shutil.which("chromium")


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server")).start()
    yield server.url
    server.kill()


def rendered_text(url: str) -> tuple[str, str]:
    """The page at ``url`` after Chromium ran its scripts: its DOM and its visible text."""
    dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                          "--dump-dom", "--virtual-time-budget=30000", url],
                         capture_output=True, text=True, timeout=180).stdout
    body = re.sub(r"<script.*?</script>|<style.*?</style>", "", dom, flags=re.S)
    return dom, re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", body)))


def test_the_compatibility_run_opens_on_its_heat_map_and_matrix_in_a_browser(mlflow_server, tmp_path, caplog):
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium; make test installs it when run as root)")
    sets = [synthetic_embeddings(tmp_path / name, name, 200, 8, seed) for seed, name in enumerate(("old", "new"))]
    code, _ = run_job("score", "--embeddings", *sets, "--old", "old", "--out", tmp_path / "report",
                      "--tracking-uri", mlflow_server, "--experiment", "browser", caplog=caplog)
    assert code == 0
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("browser")
    assert experiment.tags[EXPERIMENT_KIND[0]] == EXPERIMENT_KIND[1]
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.tags[DESCRIPTION_TAG].startswith("Compatibility of 2 models (old, new)")
    assert sorted(d.dataset.name for d in run.inputs.dataset_inputs) == ["new embeddings", "old embeddings"]

    dom, text = rendered_text(ui_link(mlflow_server, experiment.experiment_id, run.info.run_id))
    image = f"get-artifact?path=heatmap.png&amp;run_uuid={run.info.run_id}"
    assert f'src="{image}"' in dom, text[:2000]  # the heat map, an image of the run's own artifact ...
    with urllib.request.urlopen(f"{mlflow_server}/{html.unescape(image)}") as served:  # ... that the server serves
        assert served.read(8) == b"\x89PNG\r\n\x1a\n"
    top1 = (tmp_path / "report" / "matrix.txt").read_text().split("\n\n")[0]
    cells = [f"{float(v):.1f}" for v in re.findall(r"\d+\.\d\d", top1)]
    assert "top1 (%): query \\ gallery old new" in text and f"old {cells[0]} {cells[1]} new {cells[2]} {cells[3]}" in text

    _, runs_page = rendered_text(ui_link(mlflow_server, experiment.experiment_id))
    assert "compatibility-matrix" in runs_page and "old embeddings" in runs_page  # the runs table, its Dataset column
    assert "Token Usage" not in runs_page  # not the GenAI overview
