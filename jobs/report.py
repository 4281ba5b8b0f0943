"""The compatibility report of a model lineage: every pair of its registered versions (and the
transformations trained between them) scored with faiss, AC/AM, backfill curves and a verdict per
new model, logged to MLflow as one run with a nested run per model pair."""

from __future__ import annotations

from jobs import cli
from pipeline.config import SELECTION_FRACTION


def main() -> None:
    parser = cli.job_parser("report", __doc__,
                            registered_model="the lineage's registered model name",
                            dataset="the ingested Parquet dataset to encode",
                            out="report folder (embeddings, models and report/ go here)")
    parser.add_argument("--versions", nargs="*", default=None,
                            help="versions in lineage order, each the parent of the next (default: the whole chain)")
    parser.add_argument("--split", default="test", choices=["train", "test"],
                            help="the split that is both query and gallery set")
    parser.add_argument("--backfill-steps", type=int, default=10, help="points of each backfill curve after 0")
    parser.add_argument("--index-steps", type=int, default=4,
                        help="shares after 0 at which approximate indexes are measured on the mixed gallery; 0: none")
    parser.add_argument("--selection-fraction", type=float, default=SELECTION_FRACTION,
                        help="share of the training split on which each model's route and backfill order are chosen "
                             "before the test split is scored (default: %(default)s)")
    cli.add_search_args(parser)
    cli.add_encode_args(parser)
    cli.add_ray_arg(parser)
    cli.add_tracking_args(parser)
    args = parser.parse_args()
    from pipeline.config import MixedIndexConfig
    from pipeline.flows.lineage import report_registered_lineage
    from pipeline.flows.workspace import Workspace
    from pipeline.runtime import init_ray

    if args.backfill_steps < 1:
        raise ValueError(f"--backfill-steps must be at least 1 (got {args.backfill_steps})")
    score, encode = cli.score_options(args, split=args.split), cli.encode_options(args)
    init_ray(args.ray_address)
    report = report_registered_lineage(cli.run_context(args), args.registered_model, args.versions, args.dataset,
                                       Workspace.at(args.out), encode=encode, score=score,
                                       backfill_steps=args.backfill_steps,
                                       indexes=MixedIndexConfig(steps=args.index_steps),
                                       selection_fraction=args.selection_fraction)
    print(report.summary_text)
    print(f"report: {report.report_dir}\nMLflow run: {report.run_id} ({args.tracking_uri})")
    print(report.decisions)


if __name__ == "__main__":
    cli.run_main(main)
