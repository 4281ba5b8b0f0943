"""The pipeline's order of fits: a new model that needs nothing of the old one starts with it, the
others once it is done (training itself replaced by a recorder: what is checked is who waits for
whom, and who runs beside whom)."""

import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from pipeline.flows import experiment, fits
from pipeline.flows.configs import pipeline_from_dict
from pipeline.flows.workspace import Workspace

NEW = [{"name": "bct", "method": "bct"}, {"name": "independent", "method": "independent"},
       {"name": "lce", "method": "lce_direct"}]
TEAM = {"kind": "embeddings", "train": "team-train.parquet", "test": "team-test.parquet"}


@pytest.mark.parametrize(("old", "together"), [
    ({"name": "old", "classes": "first_half"}, {"old", "independent"}),  # a trained old model: beside it
    ({"name": "old", "classes": "first_half", "source": TEAM}, {"independent", "lce"}),  # imported: at once
])
def test_a_model_needing_nothing_of_the_old_one_starts_with_it_and_the_others_once_it_is_done(
        tmp_path, monkeypatch, old, together):
    cfg = pipeline_from_dict({"output_dir": str(tmp_path), "train": {"cpus_per_worker": 1}, "old": old, "new": NEW})
    barrier = threading.Barrier(2, timeout=10)  # passed only while both of `together` run
    done: list[str] = []

    def fit_model(model_cfg, dataset, folder, context, run_name, old_model=None, stats=None, **_):
        if model_cfg.name != "old" and model_cfg.method != "independent":
            assert "old" in done and old_model == tmp_path / "models" / "old" and stats == f"{model_cfg.name}.npz"
        if model_cfg.name in together:
            barrier.wait()
        done.append(model_cfg.name)
        return Path(folder)

    def import_model(source, classes, folder):
        done.append("old")
        return Path(folder)

    for module in (experiment, fits):  # the old model is fitted by the flow, the others against it
        monkeypatch.setattr(module, "fit_model", fit_model)
        monkeypatch.setattr(module, "train_split_embeddings", lambda *args: SimpleNamespace(path="old-train"))
    monkeypatch.setattr(experiment, "import_model", import_model)
    monkeypatch.setattr(experiment, "fits_at_once", lambda fits, limit: 2)
    monkeypatch.setattr(fits, "stats_for_model", lambda new, *args: f"{new.name}.npz")
    workspace = Workspace.at(tmp_path)
    run = experiment.Run(cfg, workspace, tmp_path / "dataset", [str(i) for i in range(10)],
                         workspace.context(cfg.mlflow), "tag")
    experiment.fit_models(run)
    models = run.models
    assert list(models) == ["old", "bct", "independent", "lce"]  # the config's order
    assert sorted(done) == sorted(models)
