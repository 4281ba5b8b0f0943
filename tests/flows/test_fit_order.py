"""The pipeline's order of fits: a new model that needs nothing of the old one starts with it, the
others once it is done (training itself replaced by a recorder: what is checked is who waits for
whom, and who runs beside whom)."""

import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from pipeline.flows import experiment
from pipeline.flows.configs import pipeline_from_dict

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

    monkeypatch.setattr(experiment, "fit_model", fit_model)
    monkeypatch.setattr(experiment, "import_model", import_model)
    monkeypatch.setattr(experiment, "run_resources", lambda fit: {"CPU": 1, "GPU": 0})
    monkeypatch.setattr(experiment, "runs_at_once", lambda per_run, limit: 2)
    monkeypatch.setattr(experiment, "train_split_embeddings", lambda *args: SimpleNamespace(path="old-train"))
    monkeypatch.setattr(experiment, "stats_for_model", lambda new, *args: f"{new.name}.npz")
    run = experiment._Run(cfg, tmp_path, tmp_path / "dataset", cfg.run_context(), "tag")
    models = experiment._fit_models(run, [str(i) for i in range(10)])
    assert list(models) == ["old", "bct", "independent", "lce"]  # the config's order
    assert sorted(done) == sorted(models)
