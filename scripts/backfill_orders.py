"""The backfill orders of a finished lineage (``make lineage``), over several seeds of the orders:
each order's backfill-curve areas (mean over the seeds) and how much of the gap between the
random order and the oracle the predicted order closes. Prints a Markdown table.

    PYTHONPATH=. .venv/bin/python scripts/backfill_orders.py --config configs/lineage.yaml --seeds 0 1 2

It encodes the test and training splits with each trained model where that is not done yet, in
the lineage report's layout under the config's output folder (``embeddings/<model>/<split>``;
``make lineage`` writes the training splits of the parents there).
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from pipeline.data.embeddings import open_embeddings
from pipeline.flows.configs import load_lineage_config
from pipeline.flows.lineage import lineage_embeddings
from pipeline.flows.workspace import Workspace
from pipeline.lineage.backfill import (
    backfill_orders,
    child_backfill,
    child_sets,
    curve_area,
    gap_closed,
    order_predictor,
    share_for_gain,
)
from pipeline.lineage.metrics import LineageModel
from pipeline.runtime import init_ray, setup_logging
from pipeline.score import CRITERION_METRICS

SEEDED = ("random", "stratified")  # the orders that a seed changes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/lineage.yaml", help="the lineage's config (its models)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    setup_logging()
    init_ray()
    config = load_lineage_config(args.config)
    workspace = Workspace.at(config.output_dir)
    names = [model.name for model in config.models]
    models = [LineageModel(name, workspace.model(name), names[i - 1] if i else None) for i, name in enumerate(names)]

    sets, training = ({m.name: open_embeddings(lineage_embeddings(m, config.data.root, split, workspace, config.encode))
                       for m in models} for split in ("test", "train"))
    rows = []
    for child in models[1:]:
        unseeded: dict[str, pd.DataFrame] = {}  # the predicted and oracle orders: scored once
        (query, parent), (child_train, parent_train) = child_sets(child, sets), child_sets(child, training)
        predictor = order_predictor(child_train, parent_train, np.zeros(len(child_train), dtype=bool))
        for seed in args.seeds:
            orders = backfill_orders(child, query, parent, seed, predictor)
            scored = {name: order for name, order in orders.items() if name in SEEDED or name not in unseeded}
            curves = dict(list(child_backfill(child, query, parent, scored, config.backfill_steps,
                                              full_ranking=True)[0].groupby("order", sort=False)))
            unseeded |= {order: curve for order, curve in curves.items() if order not in SEEDED}
            for order, curve in {**curves, **unseeded}.items():
                rows.append({"model": child.name, "order": order, "seed": seed,
                             **{f"area_{m}": curve_area(curve, m) for m in CRITERION_METRICS},
                             "share_for_95pct_gain": share_for_gain(curve, list(CRITERION_METRICS))})
    table = pd.DataFrame(rows)
    print(markdown(table))


def markdown(table: pd.DataFrame) -> str:
    """Per model and order: mean (and spread) over the seeds; per model, the predicted order's
    share of the gap between random and the oracle (``gap_closed``: undefined where the oracle
    does not beat random)."""
    lines = ["| model | order | area top-1 | area mAP | share for 95 % of the gain |", "|---|---|---|---|---|"]
    for (model, order), runs in table.groupby(["model", "order"], sort=False):
        cells = [f"{runs[f'area_{m}'].mean():.4f} (sd {runs[f'area_{m}'].std(ddof=0):.4f})" for m in CRITERION_METRICS]
        lines.append(f"| {model} | {order} | {' | '.join(cells)} | {runs['share_for_95pct_gain'].mean():.2f} |")
    lines += ["", "| model | metric | gap closed by the predicted order: (predicted - random) / (oracle - random) |",
              "|---|---|---|"]
    for model, runs in table.groupby("model", sort=False):
        mean = runs.groupby("order")[[f"area_{m}" for m in CRITERION_METRICS]].mean()
        for m in CRITERION_METRICS:
            random, predicted, oracle = (mean.loc[o, f"area_{m}"] for o in ("random", "predicted", "oracle"))
            closed = gap_closed(predicted, random, oracle)
            lines.append(f"| {model} | {m} | " + (f"{closed:.3f} |" if closed == closed else
                                                  f"undefined: the oracle ({oracle:.4f}) does not beat random "
                                                  f"({random:.4f}); predicted {predicted:.4f} |"))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
