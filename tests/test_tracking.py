"""Fits side by side write the same MLflow rows at the same moment: on a fresh store (a SQLite
file, as the sweep, the pipeline and the scenario runner use by default), each writer gets its
experiment and its dataset input, and the store holds each row once."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from mlflow.tracking import MlflowClient

from pipeline.tracking import experiment_id, log_dataset

WRITERS = 8


def _at_once(count: int, work) -> list:
    """``work(i, barrier)`` in ``count`` threads that a barrier releases together, and again at each
    ``barrier.wait()`` of ``work`` (fits in one driver are threads)."""
    barrier = threading.Barrier(count)

    def started(i):
        barrier.wait()
        return work(i, barrier)

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(started, range(count)))


@pytest.mark.parametrize("round_", range(5))
def test_fits_starting_together_on_a_fresh_store_all_log_their_experiment_and_dataset(tmp_path, round_):
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    (dataset / "part-0.parquet").write_bytes(b"rows")
    uri = f"sqlite:///{tmp_path / f'mlflow-{round_}.db'}"

    def fit_starts(i, barrier):  # what pipeline.train.driver.run_fit writes before its Ray Train run
        client = MlflowClient(uri)
        run = client.create_run(experiment_id(uri, "side-by-side"), run_name=f"fit-{i}")
        barrier.wait()  # every run made: the dataset input, all at once
        log_dataset(client, run.info.run_id, dataset, "dataset", "training")
        return run.info.run_id

    run_ids = _at_once(WRITERS, fit_starts)
    client = MlflowClient(uri)
    [experiment] = [e for e in client.search_experiments() if e.name == "side-by-side"]
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_id for r in runs) == sorted(run_ids)
    for run in runs:  # every fit's dataset input, one dataset row behind them all
        assert [d.dataset.name for d in run.inputs.dataset_inputs] == ["dataset"]
    assert len({r.inputs.dataset_inputs[0].dataset.digest for r in runs}) == 1
