"""Retrain the LCE model of a finished pipeline run with other compatibility weights, and score
each variant's new/old and new/new cells against that run's old model.

    python scripts/compare_lce_weights.py --run outputs/demo --dataset data/fashion-mnist \
        --variants '[{"compactness_margin": 0.3}, {"lambda_align": 3, "lambda_boundary": 3}]'

Each variant is a new model of the run's workspace, ``<model>-w<number>-<time>``, fitted against
the run's old model (``pipeline.flows.fits.fit_against``: its train-split embeddings reused), its
runs in the MLflow experiment ``lce-weights``; results print one line each.
"""

from __future__ import annotations

import argparse
import json
import time

from pipeline.config import MlflowConfig, TrainConfig
from pipeline.data.embeddings import read_embeddings
from pipeline.encode.split import encode_split
from pipeline.flows.configs import load_pipeline_config
from pipeline.flows.fits import fit_against
from pipeline.flows.workspace import Workspace
from pipeline.runtime import init_ray, setup_logging
from pipeline.score import score_pair


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="output_dir of a finished jobs.pipeline run")
    parser.add_argument("--dataset", required=True, help="the run's ingested dataset folder")
    parser.add_argument("--config", default="configs/demo.yaml", help="the run's config")
    parser.add_argument("--model", default="lce", help="the new model of the config whose weights vary")
    parser.add_argument("--variants", required=True, help="JSON list of `compat` overrides")
    args = parser.parse_args()
    setup_logging()
    init_ray()
    config, workspace, stamp = load_pipeline_config(args.config), Workspace.at(args.run), time.strftime("%Y%m%d-%H%M%S")
    lce, old = next(m for m in config.new if m.name == args.model), config.old.name
    context = workspace.context(MlflowConfig(experiment="lce-weights"))
    old_test = read_embeddings(workspace.embeddings(old, "test"))
    old_classes = list(range((len(old_test.classes) + 1) // 2))
    for number, overrides in enumerate(json.loads(args.variants)):
        cfg = TrainConfig.model_validate({**lce.model_dump(), "name": f"{lce.name}-w{number}-{stamp}",
                                          "compat": {**lce.compat.model_dump(), **overrides}})
        model = fit_against(workspace, cfg, old, args.dataset, context, encode=config.encode, run_name=cfg.name)
        new_test = read_embeddings(encode_split(model, args.dataset, "test", workspace.embeddings(cfg.name, "test")))
        new_old, new_new = score_pair(new_test, old_test, old_classes), score_pair(new_test, new_test, old_classes)
        print(f"RESULT {json.dumps(overrides)}: new/old top1 {new_old['top1']:.4f} map {new_old['map']:.4f} | "
              f"new/new top1 {new_new['top1']:.4f} map {new_new['map']:.4f}", flush=True)


if __name__ == "__main__":
    main()
