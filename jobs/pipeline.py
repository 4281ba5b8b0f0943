"""Run the whole embedded pipeline from one config: ingest, train old and new models, encode, score."""

from __future__ import annotations

import argparse

from jobs import cli
from pipeline.config import data_overrides


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m jobs.pipeline", description=__doc__)
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--data", default=None,
                        help="your own images: an ImageFolder tree or a folder of idx .gz files")
    cli.add_ray_arg(parser)
    args = parser.parse_args()
    from pipeline.flows.configs import load_pipeline_config
    from pipeline.flows.experiment import run_pipeline
    from pipeline.runtime import init_ray

    cfg = load_pipeline_config(args.config, data_overrides(args.data) if args.data else None)
    init_ray(args.ray_address or cfg.ray_address)
    result = run_pipeline(cfg)
    print("\n" + result.matrix_text)
    print(f"\npipeline finished in {result.seconds:.0f} s")
    print(f"report:  {result.report_dir} (report.csv, report.parquet, heatmap.png)")
    print(cli.mlflow_ui_lines(result.tracking_uri, cfg.mlflow.experiment))


if __name__ == "__main__":
    cli.run_main(main)
