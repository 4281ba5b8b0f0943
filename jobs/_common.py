"""What every job CLI shares: default MLflow store and error reporting."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from pipeline.runtime import setup_logging

DEFAULT_TRACKING_URI = f"sqlite:///{Path('outputs/mlflow.db').resolve()}"


def add_tracking_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tracking-uri", default=DEFAULT_TRACKING_URI, help="MLflow tracking URI (default: %(default)s)")
    parser.add_argument("--experiment", default="compat-embed", help="MLflow experiment name")


def run_main(main: Callable[[], None]) -> None:
    """Run a job's main; a known input error becomes one line on stderr and exit code 2."""
    setup_logging()
    Path("outputs").mkdir(exist_ok=True)
    try:
        main()
    except (ValueError, FileNotFoundError) as error:
        logging.getLogger("jobs").error("%s", error)
        sys.exit(2)
