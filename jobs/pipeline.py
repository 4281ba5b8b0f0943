"""Run the whole embedded pipeline from one config: ingest, train old and new models, encode, score."""

from __future__ import annotations

import argparse
import hashlib
import re
from pathlib import Path

from jobs._common import run_main
from pipeline.config import load_pipeline_config
from pipeline.flows.experiment import run_pipeline
from pipeline.runtime import init_ray


def data_overrides(data: str) -> dict:
    """A user's dataset gets its own ingested copy and output folder, keyed by its path."""
    source = Path(data).resolve()
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", source.name).strip("-") or "data"
    key = f"{slug}-{hashlib.sha1(str(source).encode()).hexdigest()[:8]}"
    return {"data": {"source": str(source), "root": f"data/{key}"}, "output_dir": f"outputs/{key}"}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m jobs.pipeline", description=__doc__)
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--data", default=None, help="your own images: an ImageFolder tree or a folder of idx .gz files")
    parser.add_argument("--ray-address", default=None)
    args = parser.parse_args()
    cfg = load_pipeline_config(args.config, data_overrides(args.data) if args.data else None)
    init_ray(args.ray_address or cfg.ray_address)
    result = run_pipeline(cfg)
    print("\n" + result.matrix_text)
    print(f"\npipeline finished in {result.seconds:.0f} s")
    print(f"report:  {result.report_dir} (report.csv, report.parquet, heatmap.png)")
    print(f"MLflow:  mlflow ui --backend-store-uri {result.tracking_uri}")


if __name__ == "__main__":
    run_main(main)
