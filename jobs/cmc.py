"""Fit cross-model compatibility: T12 and T21 between two trained models, both frozen (Ray Train)."""

from __future__ import annotations

from jobs import cli


def main() -> None:
    parser = cli.job_parser("cmc", __doc__, config="YAML of pipeline.config.CmcConfig (a CMC method of the catalogue)",
                            old_model="model 1's artifact (the deployed model)", new_model="model 2's artifact",
                            dataset="ingested dataset folder (model 2's training images)",
                            out="CMC artifact folder to write")
    parser.add_argument("--work-dir", default="outputs/cmc", help="train-split embeddings and statistics (reused)")
    parser.add_argument("--run-name", default=None,
                        help="Ray Train run name; the same name resumes (default: CMC name)")
    cli.add_encode_args(parser)
    cli.add_ray_arg(parser)
    cli.add_tracking_args(parser, storage=True)
    args = parser.parse_args()
    from pipeline.encode.split import train_split_embeddings
    from pipeline.flows.configs import load_cmc_config
    from pipeline.flows.workspace import Workspace
    from pipeline.model.card import read_encoder_card
    from pipeline.runtime import init_ray
    from pipeline.train.cross_model import fit_cmc

    cfg, options = load_cmc_config(args.config), cli.encode_options(args)
    workspace = Workspace.at(args.work_dir)
    init_ray(args.ray_address)
    train_sets = tuple(train_split_embeddings(model, args.dataset, workspace.embeddings(read_encoder_card(model).name,
                                                                                        "train"), options)
                       for model in (args.old_model, args.new_model))
    artifact = fit_cmc(cfg, args.old_model, args.new_model, args.dataset, args.out, cli.run_context(args),
                       train_sets=train_sets, files=workspace.cmc_files(cfg.name), run_name=args.run_name)
    print(f"CMC artifact: {artifact}")


if __name__ == "__main__":
    cli.run_main(main)
