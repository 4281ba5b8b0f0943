"""Confirm a sweep's best config: retrain it in 3 seeds, score them against the old gallery.

    python -m tuning.confirm --sweep-dir outputs/sweeps/demo [--seeds 0 1 2]

Calls what the jobs call (each seed fitted against the sweep's old model with its own statistics,
``pipeline.flows.fits.fit_against``; the test split encoded; every seed scored in one report with
the transformations the config trains, ``pipeline.score.report``),
then checks the two claims a sweep makes, in every seed: the retrained model meets the
compatibility criterion on the test split through its compatible route (each cell with its
paired bootstrap interval and verdict), and its objective on the validation rows is at least the
median trial's. A winner chosen by less than the seed-to-seed spread fails here. Writes
``confirm.json`` (mean and standard deviation over seeds, and each seed) and prints it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from pipeline.atomic import write_text_atomic
from pipeline.compat.methods import Method, Route, entry_name, method_of
from pipeline.config import RunContext, ScoreConfig
from pipeline.data.dataset import class_indices, read_dataset_info
from pipeline.encode.mapped import entries_from_files
from pipeline.encode.split import encode_split, train_split_embeddings
from pipeline.flows.configs import load_train_config
from pipeline.flows.fits import fit_against, reads_parent_embeddings
from pipeline.flows.workspace import Workspace
from pipeline.model.artifacts import load_model
from pipeline.model.card import read_model_card
from pipeline.runtime import init_ray
from pipeline.score import (
    MET,
    decision_line,
    pair_decision,
    pair_row,
    pair_verdict,
    read_table,
    roles_of,
    score_and_report,
)
from pipeline.train.validation import References, Validator
from tuning.space import load_sweep_config


def compatible_route(method: Method, new: str, old: str) -> tuple[str, str]:
    """The (query, gallery) matrix entries of the route a method is judged by (``Method.judged_route``,
    as ``pipeline.train.validation`` judges it)."""
    route = method.judged_route
    if route is Route.T12:
        return new, entry_name(route, new, old)
    return entry_name(route, new, old), old


def seed_result(table: pd.DataFrame, method: Method, name: str, seed: int, old: str = "old") -> dict:
    """One seed's test cell of its compatible route against the old gallery: the metrics, their
    difference with old/old and its paired interval and verdict, and the decision it supports."""
    query, gallery = compatible_route(method, name, old)
    cell = pair_row(table, query, gallery)
    return {"seed": seed, "route": f"{query} -> {gallery}",
            "test_new_old_top1": float(cell["top1"]), "test_new_old_map": float(cell["map"]),
            **{column: cell[column] for m in ("top1", "map")
               for column in (f"delta_{m}", f"delta_{m}_low", f"delta_{m}_high", f"verdict_{m}")},
            "decision": str(pair_decision(cell)), "line": decision_line(cell),
            "meets_criterion": pair_verdict(cell) == MET}


SEEDS = (0, 1, 2)


def confirm(sweep_dir: Path, seeds: tuple[int, ...] = SEEDS) -> dict:
    """Retrain the best config once per seed, score every seed's model against the old gallery
    in one report, and check the criterion in each seed (with each cell's paired interval)."""
    workspace = Workspace.at(sweep_dir)
    cfg = load_sweep_config(workspace.sweep_config)
    best = load_train_config(workspace.best_config)
    dataset, old = Path(cfg.data.root).resolve(), cfg.old.name
    context = RunContext(cfg.tracking_uri(), cfg.mlflow.experiment, str(workspace.ray))
    test_sets = [encode_split(workspace.model(old), dataset, "test", workspace.embeddings(old, "test"))]
    old_train = (train_split_embeddings(workspace.model(old), dataset, workspace.embeddings(old, "train"))
                 if reads_parent_embeddings(best) else None)  # read once for every seed
    names, models = [], []
    for seed in seeds:  # the seed also decides the rows of data_fraction, so each has its own statistics
        seeded = best.model_copy(update={"seed": seed, "name": f"{best.name}-best-s{seed}"})
        model = fit_against(workspace, seeded, old, dataset, context, run_name=seeded.name, parent_embeddings=old_train)
        test_sets.append(encode_split(model, dataset, "test", workspace.embeddings(seeded.name, "test")))
        names.append(seeded.name)
        models.append(model)
    entries = entries_from_files(test_sets, models, old, workspace.embeddings_root, "test")
    score_and_report(entries, roles_of(workspace.model(old)), ScoreConfig(), workspace.confirm_report, context)

    table = read_table(workspace.confirm_report)
    old_old = pair_row(table, old, old)
    info = read_dataset_info(dataset)
    references = json.loads(workspace.validation_references.read_text())
    validator = Validator(str(dataset), class_indices(info.classes, best.classes), method_of(best),
                          best.validation_fraction, str(workspace.validation_features),
                          References(references["old_old"], references["independent"]),
                          read_model_card(models[0]).preprocessing)
    per_seed = [{**seed_result(table, method_of(best), name, seed, old),
                 "validation_objective": validator(load_model(model)[0])["objective"]}
                for seed, name, model in zip(seeds, names, models)]
    trials = pd.read_csv(workspace.trials)
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
    write_text_atomic(workspace.confirmation, json.dumps(result, indent=1, default=str))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tuning.confirm", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sweep-dir", type=Path, required=True, help="a finished sweep's folder")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS), help="the seeds to retrain in")
    args = parser.parse_args()
    init_ray()
    result = confirm(args.sweep_dir.resolve(), tuple(args.seeds))
    print(json.dumps(result, indent=1))
    for seed in result["per_seed"]:  # the decisions last, in the report's words
        print(f"seed {seed['seed']}: {seed['line']}")
    print(f"the best config meets the criterion by its interval in every seed: "
          f"{'yes' if result['meets_criterion_every_seed'] else 'no'}")


if __name__ == "__main__":
    from jobs.cli import run_main

    run_main(main)
