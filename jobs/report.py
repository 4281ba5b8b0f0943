"""The compatibility report of a model lineage: every pair of its registered versions (and the
transformations trained between them) scored with faiss, AC/AM, backfill curves and a verdict per
new model, logged to MLflow as one run with a nested run per model pair."""

from __future__ import annotations

import argparse

from jobs._common import add_search_args, add_tracking_args, run_main, search_options
from pipeline.lineage.report import report_registered_lineage
from pipeline.runtime import init_ray


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m jobs.report", description=__doc__)
    parser.add_argument("--registered-model", required=True, help="the lineage's registered model name")
    parser.add_argument("--versions", nargs="*", default=None,
                        help="versions in lineage order, each the parent of the next (default: the whole chain)")
    parser.add_argument("--dataset", required=True, help="the ingested Parquet dataset to encode")
    parser.add_argument("--split", default="test", help="the split that is both query and gallery set")
    parser.add_argument("--out", required=True, help="report folder (embeddings, models and report/ go here)")
    parser.add_argument("--backfill-steps", type=int, default=10, help="points of each backfill curve after 0")
    add_search_args(parser)
    parser.add_argument("--ray-address", default=None)
    add_tracking_args(parser)
    args = parser.parse_args()
    if args.backfill_steps < 1:
        raise ValueError(f"--backfill-steps must be at least 1 (got {args.backfill_steps})")
    init_ray(args.ray_address)
    report = report_registered_lineage(
        args.tracking_uri, args.registered_model, args.versions, args.dataset, args.split, args.out,
        experiment=args.experiment, backfill_steps=args.backfill_steps, **search_options(args))
    print(report.summary_text)
    print(f"report: {report.report_dir}\nMLflow run: {report.run_id} ({args.tracking_uri})")


if __name__ == "__main__":
    run_main(main)
