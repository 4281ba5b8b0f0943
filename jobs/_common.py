"""What every job CLI shares: default MLflow store and error reporting."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from pipeline.data.bad_rows import POLICIES
from pipeline.runtime import setup_logging

DEFAULT_TRACKING_URI = f"sqlite:///{Path('outputs/mlflow.db').resolve()}"


def add_tracking_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tracking-uri", default=DEFAULT_TRACKING_URI, help="MLflow tracking URI (default: %(default)s)")
    parser.add_argument("--experiment", default="compat-embed", help="MLflow experiment name")


def add_bad_rows_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--on-bad-rows", choices=POLICIES, default=POLICIES[0],
                        help="a row whose image does not decode or whose label is missing or outside classes.json: "
                             "error stops naming it (default); skip leaves it out, counted and listed")


def add_search_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--index", choices=["flat", "ivf"], default="flat",
                        help="flat: exact search (default); ivf: inverted lists, for galleries past what flat serves "
                             "(the report adds its recall against flat search)")
    parser.add_argument("--nlist", type=int, default=0, help="IVF lists (0: about 4 sqrt(gallery size))")
    parser.add_argument("--nprobe", type=int, default=16, help="IVF lists probed per query")
    parser.add_argument("--no-full-ranking", action="store_true",
                        help="skip mAP and mAP@R over the full ranking (top-k only, for very large galleries)")
    parser.add_argument("--query-chunk", type=int, default=1024, help="queries per full-ranking chunk (at most)")


def search_options(args: argparse.Namespace) -> dict:
    """``index``, ``full_ranking`` and ``chunk`` for the scoring functions, from ``add_search_args``."""
    from pipeline.score.retrieval import IndexSpec

    for name in ("nlist", "nprobe", "query_chunk"):
        value = getattr(args, name)
        if value < (0 if name == "nlist" else 1):
            raise ValueError(f"--{name.replace('_', '-')} must be {'>= 0' if name == 'nlist' else '>= 1'} (got {value})")
    return {"index": IndexSpec(args.index, args.nlist, args.nprobe), "full_ranking": not args.no_full_ranking,
            "chunk": args.query_chunk}


def run_main(main: Callable[[], None]) -> None:
    """Run a job's main; a known input error becomes one line on stderr and exit code 2."""
    setup_logging()
    Path("outputs").mkdir(exist_ok=True)
    try:
        main()
    except (ValueError, FileNotFoundError) as error:
        logging.getLogger("jobs").error("%s", error)
        sys.exit(2)
