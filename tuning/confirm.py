"""Confirm a sweep's best config: retrain it with ``jobs.train`` in 3 seeds, score them with ``jobs.score``.

    python -m tuning.confirm --sweep-dir outputs/sweeps/demo [--seeds 0 1 2]

Runs the same job CLIs a user runs (train against the sweep's old model, statistics and old
train-split features, encode the test split, score with the transformations the config trains),
then checks the two claims a sweep makes, in every seed: the retrained model meets the
compatibility criterion on the test split through its compatible route (each cell with its
paired bootstrap interval and verdict), and its objective on the validation rows is at least the
median trial's. A winner chosen by less than the seed-to-seed spread fails here. Writes
``confirm.json`` (mean and standard deviation over seeds, and each seed) and prints it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml

from pipeline.atomic import write_text_atomic
from pipeline.compat.methods import Method, Route, entry_name, method_of
from pipeline.data.dataset import class_indices, read_dataset_info
from pipeline.flows.configs import load_train_config
from pipeline.model.artifacts import load_model
from pipeline.model.card import read_model_card
from pipeline.score.criteria import pair_decision, pair_row, pair_verdict
from pipeline.score.report import decision_line
from pipeline.score.uncertainty import MET
from pipeline.train.validation import References, Validator
from tuning.space import load_sweep_config


def compatible_route(method: Method, new: str, old: str) -> tuple[str, str]:
    """The (query, gallery) matrix entries of the route a method is judged by (``Method.judged_route``,
    as ``pipeline.train.validation`` judges it)."""
    route = method.judged_route
    if route is Route.T12:
        return new, entry_name(route, new, old)
    return entry_name(route, new, old), old


def seed_result(table: pd.DataFrame, method: Method, name: str, seed: int) -> dict:
    """One seed's test cell of its compatible route against the old gallery: the metrics, their
    difference with old/old and its paired interval and verdict, and the decision it supports."""
    query, gallery = compatible_route(method, name, "old")
    cell = pair_row(table, query, gallery)
    return {"seed": seed, "route": f"{query} -> {gallery}",
            "test_new_old_top1": float(cell["top1"]), "test_new_old_map": float(cell["map"]),
            **{column: cell[column] for m in ("top1", "map")
               for column in (f"delta_{m}", f"delta_{m}_low", f"delta_{m}_high", f"verdict_{m}")},
            "decision": str(pair_decision(cell)), "line": decision_line(cell),
            "meets_criterion": pair_verdict(cell) == MET}


def _job(*args: str) -> None:
    subprocess.run([sys.executable, "-m", *args], check=True)


SEEDS = (0, 1, 2)


def confirm(sweep_dir: Path, seeds: tuple[int, ...] = SEEDS) -> dict:
    """Retrain the best config once per seed, score every seed's model against the old gallery
    in one report, and check the criterion in each seed (with each cell's paired interval)."""
    cfg = load_sweep_config(sweep_dir / "sweep.yaml")
    best = load_train_config(sweep_dir / "best.yaml")
    dataset, old = Path(cfg.data.root).resolve(), sweep_dir / "models" / "old"
    tracking = ["--tracking-uri", cfg.tracking_uri(), "--experiment", cfg.mlflow.experiment]
    _job("jobs.encode", "--model", str(old), "--dataset", str(dataset), "--split", "test",
         "--out", str(sweep_dir / "embeddings" / "old" / "test"))
    names, models = [], []
    for seed in seeds:
        seeded = best.model_copy(update={"seed": seed, "name": f"{best.name}-best-s{seed}"})
        config, model = sweep_dir / "confirm" / f"{seeded.name}.yaml", sweep_dir / "models" / seeded.name
        write_text_atomic(config, yaml.safe_dump(seeded.model_dump(mode="json"), sort_keys=False))
        stats = sweep_dir / "stats" / f"{seeded.name}.npz"  # the seed decides the rows of data_fraction
        _job("jobs.stats", "--config", str(config), "--old-model", str(old), "--dataset", str(dataset),
             "--embeddings", str(sweep_dir / "embeddings" / "old" / "train"), "--out", str(stats))
        _job("jobs.train", "--config", str(config), "--dataset", str(dataset), "--out", str(model),
             "--old-model", str(old), "--stats", str(stats),
             "--old-features", str(sweep_dir / "embeddings" / "old" / "train"),
             "--storage-path", str(sweep_dir / "ray"), "--run-name", seeded.name, *tracking)
        _job("jobs.encode", "--model", str(model), "--dataset", str(dataset), "--split", "test",
             "--out", str(sweep_dir / "embeddings" / seeded.name / "test"))
        names.append(seeded.name)
        models.append(model)
    report = sweep_dir / "confirm-report"
    _job("jobs.score", "--embeddings", str(sweep_dir / "embeddings" / "old" / "test"),
         *(str(sweep_dir / "embeddings" / name / "test") for name in names), "--old-model", str(old),
         "--artifacts", *map(str, models), "--out", str(report), *tracking)

    table = pd.read_csv(report / "report.csv")
    old_old = pair_row(table, "old", "old")
    info = read_dataset_info(dataset)
    references = json.loads((sweep_dir / "validation" / "references.json").read_text())
    validator = Validator(str(dataset), class_indices(info.classes, best.classes), method_of(best),
                          best.validation_fraction, str(sweep_dir / "validation" / "old_features.npz"),
                          References(references["old_old"], references["independent"]),
                          read_model_card(models[0]).preprocessing)
    per_seed = [{**seed_result(table, method_of(best), name, seed),
                 "validation_objective": validator(load_model(model)[0])["objective"]}
                for seed, name, model in zip(seeds, names, models)]
    trials = pd.read_csv(sweep_dir / "trials.csv")
    median = float(trials.loc[trials.status != "error", "objective"].dropna().median())  # as the sweep logs it
    frame = pd.DataFrame(per_seed)
    result = {
        "method": best.method, "seeds": list(seeds),
        "test_old_old_top1": float(old_old["top1"]), "test_old_old_map": float(old_old["map"]),
        **{f"test_new_old_{m}_{stat}": float(getattr(frame[f"test_new_old_{m}"], stat)())
           for m in ("top1", "map") for stat in ("mean", "std")},
        "meets_criterion_every_seed": bool(frame.meets_criterion.all()),
        "median_trial_objective": median,
        "objective_at_least_median_every_seed": bool((frame.validation_objective >= median).all()),
        "per_seed": per_seed,
    }
    write_text_atomic(sweep_dir / "confirm.json", json.dumps(result, indent=1, default=str))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tuning.confirm", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sweep-dir", type=Path, required=True, help="a finished sweep's folder")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS), help="the seeds to retrain in")
    args = parser.parse_args()
    result = confirm(args.sweep_dir.resolve(), tuple(args.seeds))
    print(json.dumps(result, indent=1))
    for seed in result["per_seed"]:  # the decisions last, in the report's words
        print(f"seed {seed['seed']}: {seed['line']}")
    print(f"the best config meets the criterion by its interval in every seed: "
          f"{'yes' if result['meets_criterion_every_seed'] else 'no'}")


if __name__ == "__main__":
    from jobs.cli import run_main

    run_main(main)
