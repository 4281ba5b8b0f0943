"""The pipeline's order of fits: a new model that needs nothing of the old one trains beside it
(training itself replaced by a recorder: what is checked is who waits for whom)."""

import threading
from pathlib import Path
from types import SimpleNamespace

from pipeline.config import pipeline_from_dict
from pipeline.flows import experiment


def test_an_independent_model_trains_beside_the_old_one_and_the_others_after_it(tmp_path, monkeypatch):
    cfg = pipeline_from_dict({"output_dir": str(tmp_path), "train": {"cpus_per_worker": 1},
                              "old": {"name": "old", "classes": "first_half"},
                              "new": [{"name": "bct", "method": "bct"},
                                      {"name": "independent", "method": "independent"},
                                      {"name": "lce", "method": "lce_direct"}]})
    together = threading.Barrier(2, timeout=10)  # old and independent must both be running to pass it
    finished: list[str] = []

    def fit_model(model_cfg, dataset, folder, context, run_name, old_model=None, stats=None, **_):
        if model_cfg.name in ("old", "independent"):
            together.wait()
            assert old_model is None and stats is None
        else:
            assert "old" in finished and old_model == tmp_path / "models" / "old" and stats is not None
        finished.append(model_cfg.name)
        return Path(folder)

    monkeypatch.setattr(experiment, "fit_model", fit_model)
    monkeypatch.setattr(experiment, "run_resources", lambda fit: {"CPU": 1, "GPU": 0})
    monkeypatch.setattr(experiment, "runs_at_once", lambda per_run, limit: 2)
    monkeypatch.setattr(experiment, "train_split_embeddings", lambda *args: SimpleNamespace(path="old-train"))
    monkeypatch.setattr(experiment, "stats_for_model", lambda new, *args: f"{new.name}.npz")
    run = experiment._Run(cfg, tmp_path, tmp_path / "dataset", cfg.run_context(), "tag")
    models = experiment._fit_models(run, [str(i) for i in range(10)])
    assert list(models) == ["old", "bct", "independent", "lce"]  # the config's order
    assert set(finished[:2]) == {"old", "independent"} and set(finished[2:]) == {"bct", "lce"}
