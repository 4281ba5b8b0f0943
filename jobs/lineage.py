"""Train a lineage of models from one config (each compatible with the one before it), register
each version in the MLflow Model Registry, and write the lineage's compatibility report."""

from __future__ import annotations

import argparse

from jobs import cli


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m jobs.lineage", description=__doc__)
    parser.add_argument("--config", default="configs/lineage.yaml")
    cli.add_ray_arg(parser)
    args = parser.parse_args()
    from pipeline.flows.configs import load_lineage_config
    from pipeline.flows.lineage import run_lineage
    from pipeline.runtime import init_ray

    cfg = load_lineage_config(args.config)
    init_ray(args.ray_address or cfg.ray_address)
    report = run_lineage(cfg)
    print(report.summary_text)
    print(f"report:  {report.report_dir}")
    print(cli.mlflow_ui_lines(cfg.tracking_uri(), cfg.mlflow.experiment, report.run_id))
    print(report.decisions)


if __name__ == "__main__":
    cli.run_main(main)
