"""Old-space statistics for a new model: centers and boundaries of the old model over its training images."""

from __future__ import annotations

from jobs import cli


def main() -> None:
    parser = cli.job_parser("stats", __doc__, "old_model", "dataset",
                            config="the new model's TrainConfig YAML (classes, fraction, boundary)",
                            out="statistics .npz to write",
                            embeddings="folder for the old model's train-split embeddings")
    cli.add_encode_args(parser)
    cli.add_ray_arg(parser)
    args = parser.parse_args()
    from pipeline.encode.split import train_split_embeddings
    from pipeline.flows.configs import load_train_config
    from pipeline.runtime import init_ray
    from pipeline.train.inputs import stats_for_model

    cfg, options = load_train_config(args.config), cli.encode_options(args)
    init_ray(args.ray_address)
    embeddings = train_split_embeddings(args.old_model, args.dataset, args.embeddings, options)
    print(f"statistics: {stats_for_model(cfg, args.old_model, embeddings, args.dataset, args.out)}")


if __name__ == "__main__":
    cli.run_main(main)
