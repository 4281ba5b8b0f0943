"""Register a model artifact folder as the next version of a lineage in the MLflow Model Registry."""

from __future__ import annotations

import argparse

from jobs._common import add_tracking_args, run_main
from pipeline.lineage.registry import register_model


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m jobs.register", description=__doc__)
    parser.add_argument("--model", required=True, help="the model's artifact folder (weights + card)")
    parser.add_argument("--registered-model", required=True, help="the lineage's registered model name")
    parser.add_argument("--parent-version", default=None, help="the version this model was made compatible with")
    add_tracking_args(parser)
    args = parser.parse_args()
    version = register_model(args.tracking_uri, args.registered_model, args.model, args.parent_version, args.experiment)
    print(f"{args.registered_model} version {version.version} (parent {version.parent or 'none'})")


if __name__ == "__main__":
    run_main(main)
