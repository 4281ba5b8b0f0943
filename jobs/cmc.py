"""Fit cross-model compatibility: T12 and T21 between two trained models, both frozen (Ray Train)."""

from __future__ import annotations

import argparse

from jobs._common import add_tracking_args, run_main
from pipeline.config import load_cmc_config
from pipeline.runtime import init_ray
from pipeline.train.cross_model import fit_cmc


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m jobs.cmc", description=__doc__)
    parser.add_argument("--config", required=True, help="YAML of pipeline.config.CmcConfig (method lce_cmc or rbt_cmc)")
    parser.add_argument("--old-model", required=True, help="model 1's artifact (the deployed model)")
    parser.add_argument("--new-model", required=True, help="model 2's artifact")
    parser.add_argument("--dataset", required=True, help="ingested dataset folder (model 2's training images)")
    parser.add_argument("--out", required=True, help="CMC artifact folder to write")
    parser.add_argument("--work-dir", default="outputs/cmc", help="train-split embeddings and statistics (reused)")
    parser.add_argument("--storage-path", default="outputs/ray", help="Ray Train storage (shared on a cluster)")
    parser.add_argument("--ray-address", default=None)
    add_tracking_args(parser)
    args = parser.parse_args()
    cfg = load_cmc_config(args.config)
    init_ray(args.ray_address)
    artifact = fit_cmc(cfg, args.old_model, args.new_model, args.dataset, args.out, work_dir=args.work_dir,
                       storage_path=args.storage_path, tracking_uri=args.tracking_uri, experiment=args.experiment)
    print(f"CMC artifact: {artifact}")


if __name__ == "__main__":
    run_main(main)
