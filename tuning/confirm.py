"""Confirm a sweep's best config: retrain it with ``jobs.train``, score it with ``jobs.score``.

    python -m tuning.confirm --sweep-dir outputs/sweeps/demo

Runs the same job CLIs a user runs (train against the sweep's old model and statistics, encode
the test split with both models, score with the transformations the config trains), then checks
the two claims a sweep makes: the retrained model meets the compatibility criterion on the test
split through its compatible route, and its objective on the validation rows is at least the
median trial's. Writes ``confirm.json`` beside the sweep's outputs and prints the verdict.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

from pipeline.compat.methods import Method, Route, entry_name
from pipeline.config import load_train_config
from pipeline.data.dataset import class_indices, read_dataset_info
from pipeline.model.artifacts import load_model
from pipeline.score.criteria import beats, pair_row
from pipeline.train.validation import References, Validator
from tuning.space import load_sweep_config


def compatible_route(method: Method, new: str, old: str) -> tuple[str, str]:
    """The (query, gallery) matrix entries of the route a method is judged by (``Method.judged_route``,
    as ``pipeline.train.validation`` judges it)."""
    route = method.judged_route
    if route is Route.T12:
        return new, entry_name(route, new, old)
    return entry_name(route, new, old), old


def _job(*args: str) -> None:
    subprocess.run([sys.executable, "-m", *args], check=True)


def confirm(sweep_dir: Path) -> dict:
    cfg = load_sweep_config(sweep_dir / "sweep.yaml")
    best = load_train_config(sweep_dir / "best.yaml")
    dataset, old = Path(cfg.data.root).resolve(), sweep_dir / "models" / "old"
    model = sweep_dir / "models" / f"{best.name}-best"
    tracking = ["--tracking-uri", cfg.tracking_uri(), "--experiment", cfg.mlflow.experiment]
    _job("jobs.train", "--config", str(sweep_dir / "best.yaml"), "--dataset", str(dataset), "--out", str(model),
         "--old-model", str(old), "--stats", str(sweep_dir / "stats" / "base.npz"),
         "--old-features", str(sweep_dir / "embeddings" / "old" / "train"),
         "--storage-path", str(sweep_dir / "ray"), "--run-name", f"{best.name}-best", *tracking)
    for name, folder in (("old", old), ("best", model)):
        _job("jobs.encode", "--model", str(folder), "--dataset", str(dataset), "--split", "test",
             "--out", str(sweep_dir / "embeddings" / name / "test"))
    report = sweep_dir / "confirm-report"
    _job("jobs.score", "--embeddings", str(sweep_dir / "embeddings" / "old" / "test"),
         str(sweep_dir / "embeddings" / "best" / "test"), "--old-model", str(old), "--artifacts", str(model),
         "--out", str(report), *tracking)

    table = pd.read_csv(report / "report.csv")
    query, gallery = compatible_route(best.method_spec, best.name, "old")
    cell, old_old = pair_row(table, query, gallery), pair_row(table, "old", "old")

    info = read_dataset_info(dataset)
    references = json.loads((sweep_dir / "validation" / "references.json").read_text())
    validator = Validator(str(dataset), class_indices(info.classes, best.classes), best.method_spec,
                          best.validation_fraction, str(sweep_dir / "validation" / "old_features.npz"),
                          References(references["old_old"], references["independent"]))
    objective = validator(load_model(model)[0])["objective"]
    trials = pd.read_csv(sweep_dir / "trials.csv")
    median = float(trials.loc[trials.status != "error", "objective"].dropna().median())  # as the sweep logs it
    result = {
        "method": best.method, "route": f"{query} -> {gallery}",
        "test_new_old_top1": float(cell["top1"]), "test_new_old_map": float(cell["map"]),
        "test_old_old_top1": float(old_old["top1"]), "test_old_old_map": float(old_old["map"]),
        "meets_criterion": beats(cell["top1"], old_old["top1"]) and beats(cell["map"], old_old["map"]),
        "validation_objective": objective, "median_trial_objective": median,
        "objective_at_least_median": objective >= median,
    }
    (sweep_dir / "confirm.json").write_text(json.dumps(result, indent=1))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tuning.confirm", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sweep-dir", type=Path, required=True, help="a finished sweep's folder")
    result = confirm(parser.parse_args().sweep_dir.resolve())
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    from jobs.cli import run_main

    run_main(main)
