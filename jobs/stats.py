"""Old-space statistics for a new model: centers and boundaries of the old model over its training images."""

from __future__ import annotations

import argparse

from jobs._common import run_main
from pipeline.config import load_train_config
from pipeline.runtime import init_ray
from pipeline.train.inputs import stats_for_model, train_split_embeddings


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m jobs.stats", description=__doc__)
    parser.add_argument("--config", required=True, help="the new model's TrainConfig YAML (classes, fraction, boundary)")
    parser.add_argument("--old-model", required=True, help="old model artifact folder")
    parser.add_argument("--dataset", required=True, help="ingested dataset folder")
    parser.add_argument("--out", required=True, help="statistics .npz to write")
    parser.add_argument("--embeddings", required=True, help="folder for the old model's train-split embeddings")
    parser.add_argument("--ray-address", default=None)
    args = parser.parse_args()
    cfg = load_train_config(args.config)
    init_ray(args.ray_address)
    embeddings = train_split_embeddings(args.old_model, args.dataset, args.embeddings)
    print(f"statistics: {stats_for_model(cfg, args.old_model, embeddings, args.dataset, args.out)}")


if __name__ == "__main__":
    run_main(main)
