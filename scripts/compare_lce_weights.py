"""Retrain the LCE model of a finished pipeline run with other compatibility weights, and score
each variant's new/old and new/new cells against that run's old model.

    python scripts/compare_lce_weights.py --run outputs/demo --dataset data/fashion-mnist \
        --variants '[{"compactness_margin": 0.3}, {"lambda_align": 3, "lambda_boundary": 3}]'

Each variant reuses the run's old model and its train-split embeddings; results print one line
each and go under <run>/weight-variants/.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from pipeline.config import RunContext, TrainConfig, sqlite_tracking_uri
from pipeline.data.embeddings import read_embeddings
from pipeline.encode.split import encode_split
from pipeline.flows.configs import load_pipeline_config
from pipeline.runtime import init_ray, setup_logging
from pipeline.score.pairs import score_pair
from pipeline.train.inputs import stats_for_model
from pipeline.train.training import fit_model


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
    run, out = Path(args.run), Path(args.run) / "weight-variants" / time.strftime("%Y%m%d-%H%M%S")
    lce = next(m for m in load_pipeline_config(args.config).new if m.name == args.model)
    old_test, old_train = read_embeddings(run / "embeddings/old/test"), read_embeddings(run / "embeddings/old/train")
    old_classes = list(range((len(old_test.classes) + 1) // 2))
    for number, overrides in enumerate(json.loads(args.variants)):
        cfg = TrainConfig.model_validate({**lce.model_dump(), "compat": {**lce.compat.model_dump(), **overrides}})
        folder = out / f"variant-{number}"
        stats = stats_for_model(cfg, run / "models/old", old_train, args.dataset, folder / "stats.npz")
        context = RunContext(sqlite_tracking_uri(out), "lce-weights", str(out / "ray"))
        model = fit_model(cfg, args.dataset, folder / "model", context, old_model=run / "models/old", stats=stats,
                          run_name=f"variant-{number}")
        new_test = read_embeddings(encode_split(model, args.dataset, "test", folder / "embeddings"))
        new_old, new_new = score_pair(new_test, old_test, old_classes), score_pair(new_test, new_test, old_classes)
        print(f"RESULT {json.dumps(overrides)}: new/old top1 {new_old['top1']:.4f} map {new_old['map']:.4f} | "
              f"new/new top1 {new_new['top1']:.4f} map {new_new['map']:.4f}", flush=True)


if __name__ == "__main__":
    main()
