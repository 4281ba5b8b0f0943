"""Train one model (independent, BCT or LCE in any manner) with Ray Train and write its artifact."""

from __future__ import annotations

import argparse

from jobs._common import add_tracking_args, run_main
from pipeline.config import load_train_config
from pipeline.runtime import init_ray
from pipeline.train.training import fit_model


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m jobs.train", description=__doc__)
    parser.add_argument("--config", required=True, help="YAML of pipeline.config.TrainConfig")
    parser.add_argument("--dataset", required=True, help="ingested dataset folder")
    parser.add_argument("--out", required=True, help="model artifact folder to write")
    parser.add_argument("--storage-path", default="outputs/ray", help="Ray Train storage (shared on a cluster)")
    parser.add_argument("--run-name", default=None, help="Ray Train run name; the same name resumes (default: model name)")
    parser.add_argument("--old-model", default=None, help="old model artifact (bct, lce_*)")
    parser.add_argument("--stats", default=None, help="old-space statistics .npz (bct, lce_*)")
    parser.add_argument("--ray-address", default=None)
    add_tracking_args(parser)
    args = parser.parse_args()
    cfg = load_train_config(args.config)
    init_ray(args.ray_address)
    artifact = fit_model(cfg, args.dataset, args.out, storage_path=args.storage_path, tracking_uri=args.tracking_uri,
                         experiment=args.experiment, old_model=args.old_model, stats=args.stats,
                         run_name=args.run_name)
    print(f"model artifact: {artifact}")


if __name__ == "__main__":
    run_main(main)
