"""Train one model (any training method of the catalogue) with Ray Train and write its artifact."""

from __future__ import annotations

from jobs import cli


def main() -> None:
    parser = cli.job_parser("train", __doc__, "dataset", config="YAML of pipeline.config.TrainConfig",
                            out="model artifact folder to write")
    parser.add_argument("--run-name", default=None,
                        help="Ray Train run name; the same name resumes (default: model name)")
    parser.add_argument("--old-model", default=None, help="old model artifact (methods that need one)")
    parser.add_argument("--stats", default=None, help="old-space statistics .npz (methods that need them)")
    parser.add_argument("--old-features", default=None,
                        help="the old model's train-split embeddings folder (the forward manners read them by id; "
                             "jobs.stats writes them)")
    cli.add_ray_arg(parser)
    cli.add_tracking_args(parser, storage=True)
    args = parser.parse_args()
    from pipeline.flows.configs import load_train_config
    from pipeline.runtime import init_ray
    from pipeline.train.training import fit_model

    cfg = load_train_config(args.config)
    init_ray(args.ray_address)
    artifact = fit_model(cfg, args.dataset, args.out, cli.run_context(args), old_model=args.old_model, stats=args.stats,
                         run_name=args.run_name, old_features=args.old_features)
    print(f"model artifact: {artifact}")


if __name__ == "__main__":
    cli.run_main(main)
