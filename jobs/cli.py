"""What every job CLI shares: its arguments for the same configs, and error reporting.

Arguments become the library's configs whole (``EncodeConfig``, ``ScoreConfig``, ``RunContext``),
checked by the same schemas as a YAML file: a bad value is one line naming the option's key.
A job imports the library after parsing its arguments, so that ``--help`` answers without
loading torch, Ray or MLflow (``tests/jobs/test_cli.py`` checks it).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.config import (
    DEFAULT_EXPERIMENT,
    SCORING_KINDS,
    EncodeConfig,
    IndexConfig,
    RunContext,
    ScoreConfig,
    sqlite_tracking_uri,
    validate,
)
from pipeline.data.bad_rows import POLICIES
from pipeline.names import check_name
from pipeline.runtime import setup_logging, stop_on_sigterm

if TYPE_CHECKING:
    from pipeline.data.embeddings import EmbeddingSet

DEFAULT_TRACKING_URI = sqlite_tracking_uri("outputs")
COMMAND_LINE = "command line"


# Required options several jobs take, with their help.
STANDARD_OPTIONS = {"dataset": "ingested dataset folder", "old_model": "the old model's artifact folder"}


def job_parser(job: str, description: str | None, *standard: str, **required: str) -> argparse.ArgumentParser:
    """The parser of ``python -m jobs.<job>``, with a required option per name of ``standard``
    (``STANDARD_OPTIONS``) and per keyword of ``required`` (``old_model`` is ``--old-model``, its
    value the option's help)."""
    parser = argparse.ArgumentParser(prog=f"python -m jobs.{job}", description=description)
    for name, help_text in {**{name: STANDARD_OPTIONS[name] for name in standard}, **required}.items():
        parser.add_argument(f"--{name.replace('_', '-')}", required=True, help=help_text)
    return parser


def add_tracking_args(parser: argparse.ArgumentParser, storage: bool = False) -> None:
    """MLflow's tracking URI and experiment, and with ``storage`` Ray Train's storage path."""
    parser.add_argument("--tracking-uri", default=DEFAULT_TRACKING_URI,
                        help="MLflow tracking URI (default: %(default)s)")
    parser.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help="MLflow experiment name")
    if storage:
        parser.add_argument("--storage-path", default=RunContext.storage_path,
                            help="Ray Train storage (shared on a cluster; default: %(default)s)")


def run_context(args: argparse.Namespace) -> RunContext:
    return RunContext(args.tracking_uri, args.experiment, getattr(args, "storage_path", RunContext.storage_path))


def add_ray_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ray-address", default=None,
                        help="a running cluster (default: RAY_ADDRESS, else a local one)")


def add_bad_rows_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--on-bad-rows", choices=POLICIES, default=POLICIES[0],
                        help="a row whose image does not decode or whose label is missing or outside classes.json: "
                             "error stops naming it (default); skip leaves it out, counted and listed")


def add_encode_args(parser: argparse.ArgumentParser) -> None:
    """``EncodeConfig``'s fields, its defaults and descriptions."""
    fields, defaults = EncodeConfig.model_fields, EncodeConfig()
    for name, kind in (("batch_size", int), ("num_actors", int), ("cpus_per_actor", float), ("threads_per_actor", int)):
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, default=getattr(defaults, name),
                            help=fields[name].description)
    parser.add_argument("--use-gpu", action=argparse.BooleanOptionalAction, default=defaults.use_gpu,
                        help=fields["use_gpu"].description)
    add_bad_rows_arg(parser)


def encode_options(args: argparse.Namespace) -> EncodeConfig:
    return validate(EncodeConfig, {name: getattr(args, name) for name in EncodeConfig.model_fields}, COMMAND_LINE)


def add_search_args(parser: argparse.ArgumentParser) -> None:
    """How ``ScoreConfig`` searches (the index, the full ranking) and judges negative flips, with its defaults."""
    score, index = ScoreConfig(), IndexConfig()
    parser.add_argument("--index", choices=SCORING_KINDS, default=index.kind,
                        help="flat: exact search (default); ivf: inverted lists, for galleries past what flat serves "
                             "(the report adds its recall against flat search)")
    parser.add_argument("--nlist", type=int, default=index.nlist,
                        help="IVF lists (0: about 4 sqrt(gallery size), at most size / 39)")
    parser.add_argument("--nprobe", type=int, default=index.nprobe, help="IVF lists probed per query")
    parser.add_argument("--no-full-ranking", action="store_true",
                        help="skip mAP and mAP@R over the full ranking (top-k only, for very large galleries)")
    parser.add_argument("--query-chunk", type=int, default=score.query_chunk,
                        help=ScoreConfig.model_fields["query_chunk"].description)
    parser.add_argument("--max-flip-rate", type=float, default=score.max_flip_rate,
                        help=ScoreConfig.model_fields["max_flip_rate"].description)


def score_options(args: argparse.Namespace, **fields: Any) -> ScoreConfig:
    """The ``ScoreConfig`` of ``add_search_args``' options and ``fields`` (split, topk)."""
    raw = {"index": {"kind": args.index, "nlist": args.nlist, "nprobe": args.nprobe},
           "full_ranking": not args.no_full_ranking, "query_chunk": args.query_chunk,
           "max_flip_rate": args.max_flip_rate, **fields}
    return validate(ScoreConfig, raw, COMMAND_LINE)


def label_map(path: str | Path) -> list[str]:
    """A label map file: a JSON list of class names (as a dataset's classes.json)."""
    try:
        classes = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: cannot read the label map ({error})") from None
    if not isinstance(classes, list) or not all(isinstance(name, str) for name in classes):
        raise ValueError(f"{path}: a label map is a JSON list of class names")
    return classes


def external_sets(specs: list[str], classes: str | None) -> list["EmbeddingSet"]:
    """The ``NAME=PATH`` sets of ``--external``, their labels read through the ``--classes`` map."""
    from pipeline.data.external import external_set

    if specs and classes is None:
        raise ValueError("--external needs --classes, the label map of its sets' labels")
    sets = []
    for spec in specs:
        name, separator, path = spec.partition("=")
        if not separator or not name or not path:
            raise ValueError(f"--external {spec!r}: expected NAME=PATH")
        sets.append(external_set(path, check_name(name, "--external name"), label_map(classes)))
    return sets


def mlflow_ui_lines(tracking_uri: str, experiment: str, run_id: str | None = None) -> str:
    """How to open the results: ``mlflow ui`` for a local store, then the model-training view's page."""
    from pipeline.tracking import experiment_id, ui_link

    server = tracking_uri if tracking_uri.startswith("http") else "http://127.0.0.1:5000"
    start = "" if tracking_uri.startswith("http") else f"mlflow ui --backend-store-uri {tracking_uri}, then open "
    return f"MLflow:  {start}{ui_link(server, experiment_id(tracking_uri, experiment), run_id)}"


def run_main(main: Callable[[], None]) -> None:
    """Run a job's main; a known input error, a folder another job is writing or a tracking
    server that does not answer becomes one line on stderr and exit code 2. SIGTERM (preemption,
    ``ray job stop``) stops it as ``Preempted``: its writes remove their temporary files, its
    locks are released, its MLflow run stays open, and the same command continues (exit 143).
    During a Ray Train fit it ends the process at once instead (``pipeline.runtime.exit_on_sigterm``),
    leaving its lock's record for the rerun to take over."""
    from pipeline.errors import FolderInUse, TrackingUnreachable, preempted

    setup_logging()
    Path("outputs").mkdir(exist_ok=True)
    stop_on_sigterm()
    try:
        main()
    except (ValueError, FileNotFoundError, FolderInUse, TrackingUnreachable, OSError) as error:
        logging.getLogger("jobs").error("%s", error)
        sys.exit(2)
    except BaseException as error:
        if not preempted(error):
            raise
        logging.getLogger("jobs").error("stopped by SIGTERM: nothing half-written is left; run the same command to "
                                        "continue")
        sys.exit(143)
