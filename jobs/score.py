"""Score every (query model, gallery model) pair of embedding sets with faiss; log the matrix to MLflow.

Transformed entries (a new model through its T21, the old gallery through a T12) join the matrix
when ``--artifacts`` names the model and CMC artifacts that hold the transformations."""

from __future__ import annotations

from pathlib import Path

from jobs import cli
from pipeline.config import ScoreConfig
from pipeline.encode.mapped import entries_from_files
from pipeline.score.report import roles_of, score_and_report


def main() -> None:
    parser = cli.job_parser("score", __doc__,
                            old_model="the old model's artifact (defines seen/unseen classes)",
                            out="report folder to write")
    parser.add_argument("--embeddings", nargs="+", required=True, help="embeddings folders, one per model")
    parser.add_argument("--independent", default=None, help="name of the independent new model (update gain)")
    parser.add_argument("--artifacts", nargs="*", default=[],
                            help="model or CMC artifact folders whose transformations add matrix entries (mapped sets "
                                 "are written under OUT/embeddings)")
    defaults = ScoreConfig()
    parser.add_argument("--topk", type=int, nargs="+", default=defaults.topk,
                        help=ScoreConfig.model_fields["topk"].description)
    parser.add_argument("--split", default=defaults.split,
                        help="the split the embeddings encode (names the mapped sets' folders)")
    cli.add_search_args(parser)
    cli.add_tracking_args(parser)
    args = parser.parse_args()
    options = cli.score_options(args, topk=args.topk, split=args.split)
    roles = roles_of(args.old_model, args.independent)
    entries = entries_from_files(args.embeddings, args.artifacts, roles.old, Path(args.out) / "embeddings", args.split)
    print(score_and_report(entries, roles, options, args.out, cli.run_context(args)))


if __name__ == "__main__":
    cli.run_main(main)
