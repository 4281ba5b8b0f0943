"""Register a model artifact folder as the next version of a lineage in the MLflow Model Registry."""

from __future__ import annotations

from jobs import cli


def main() -> None:
    parser = cli.job_parser("register", __doc__,
                            model="the model's artifact folder (weights + card)",
                            registered_model="the lineage's registered model name")
    parser.add_argument("--parent-version", default=None, help="the version this model was made compatible with")
    cli.add_tracking_args(parser)
    args = parser.parse_args()
    from pipeline.lineage.registry import register_model

    version = register_model(args.tracking_uri, args.registered_model, args.model, args.parent_version, args.experiment)
    print(f"{args.registered_model} version {version.version} (parent {version.parent or 'none'})")


if __name__ == "__main__":
    cli.run_main(main)
