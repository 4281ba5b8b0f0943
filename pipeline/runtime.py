"""Process set-up shared by the jobs: logging, connecting to (or starting) Ray, and how many fits
the cluster runs side by side."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[1]
RUNTIME_ENV_FILE = PROJECT_ROOT / "configs" / "runtime_env.yaml"
T, R = TypeVar("T"), TypeVar("R")


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


_STOP_ON_SIGTERM = False  # whether a job asked for it (stop_on_sigterm)


_fits_running = 0  # Ray Train fits running now, side by side or not (exit_on_sigterm)
_FITS_RUNNING_GUARD = threading.Lock()


def _preempted(signum: int, _frame: object) -> None:
    from pipeline.errors import Preempted

    if _fits_running:
        logging.getLogger("jobs").error("stopped by SIGTERM during a fit: its last checkpoint and MLflow run stay; "
                                        "run the same command to continue")
        os._exit(143)
    raise Preempted(signal.Signals(signum).name)


@contextmanager
def exit_on_sigterm() -> Iterator[None]:
    """While the block runs, SIGTERM ends the process at once (exit 143) instead of unwinding: a
    Ray Train fit stopped by an exception aborts its run, which a rerun then starts again from
    epoch 0, while one whose driver is gone resumes from its last checkpoint (as after SIGKILL).
    Fits side by side count: the process exits so while any of them runs."""
    global _fits_running
    with _FITS_RUNNING_GUARD:
        _fits_running += 1
    try:
        yield
    finally:
        with _FITS_RUNNING_GUARD:
            _fits_running -= 1


def stop_on_sigterm() -> None:
    """SIGTERM raises ``Preempted`` in the main thread (``jobs.cli.run_main`` says what it means);
    set again after ``ray.init``, which puts in its own handler (``sys.exit``, then an abort)."""
    global _STOP_ON_SIGTERM
    _STOP_ON_SIGTERM = True
    signal.signal(signal.SIGTERM, _preempted)


def in_terminal() -> bool:
    """Whether stderr is a terminal: progress bars there, plain log lines in files and CI logs."""
    return sys.stderr.isatty()


def progress(items: Iterable[T], what: str, total: int | None = None) -> Iterator[T]:
    """``items`` one by one, with a progress bar named ``what`` (of ``total`` steps, default
    ``len(items)``) when stderr is a terminal (log lines printed meanwhile go above the bar);
    elsewhere just the items."""
    if not in_terminal():
        yield from items
        return
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    with logging_redirect_tqdm():
        yield from tqdm(items, desc=what, total=len(items) if total is None else total)


def cluster_runtime_env() -> dict:
    """The jobs' runtime environment on a cluster (``configs/runtime_env.yaml``), its working
    directory this checkout, so that workers on every node import the same ``pipeline/``."""
    runtime_env = yaml.safe_load(RUNTIME_ENV_FILE.read_text())
    runtime_env["working_dir"] = str(PROJECT_ROOT)
    return runtime_env


def init_ray(address: str | None = None) -> None:
    """Join the cluster at ``address`` with the project's runtime environment, or the one in
    ``RAY_ADDRESS`` (set by ``ray job submit``, whose job declared it already), else start a
    local one with this machine's cores."""
    import ray  # here, not at the top: a job's --help answers without loading Ray

    if ray.is_initialized():
        return
    if address:
        runtime_env = cluster_runtime_env()
    elif os.environ.get("RAY_ADDRESS"):
        runtime_env = None
    else:  # a local cluster: its workers find `pipeline/` from this checkout
        runtime_env = {"env_vars": {"PYTHONPATH": str(PROJECT_ROOT)}}
    address = address or os.environ.get("RAY_ADDRESS")
    # The dashboard (on 127.0.0.1) serves the state API that Ray Train's placement-group cleanup queries.
    ray.init(address=address, runtime_env=runtime_env)
    if _STOP_ON_SIGTERM:
        stop_on_sigterm()
    logging.getLogger(__name__).info("ray: %s", ray.cluster_resources())


def runs_at_once(per_run: dict[str, float], limit: int | None = None) -> int:
    """How many runs that each need ``per_run`` resources (``{"CPU": 2, "GPU": 1}``) the cluster
    holds side by side, at most ``limit`` and at least 1 (which then waits for its resources)."""
    import ray

    available = ray.cluster_resources()
    fits = min((int(available.get(key, 0) // need) for key, need in per_run.items() if need > 0), default=1)
    return max(1, min(fits, limit) if limit else fits)


def side_by_side(fit: Callable[[T], R], configs: list[T], at_once: int, what: str) -> list[R]:
    """``fit`` of every config, ``at_once`` of them at a time (each fit waits on its own Ray Train
    run, so threads are enough); results in the order of ``configs``, the first error raised as
    soon as it happens."""
    logging.getLogger(__name__).info("%d %s, %d at once", len(configs), what, at_once)
    with ThreadPoolExecutor(max_workers=max(1, at_once)) as pool:
        futures = [pool.submit(fit, config) for config in configs]
        settle(pool, futures)
        return [future.result() for future in futures]


def settle(pool: ThreadPoolExecutor, futures: Iterable[Future], until: Future | None = None) -> None:
    """Wait until ``until`` is done (None: every one of ``futures``); the first of them to fail
    cancels what ``pool`` has not started and raises its error at once, not after the others."""
    pending = set(futures) | ({until} if until is not None else set())
    while pending and (until is None or until in pending):
        done, pending = wait(pending, return_when=FIRST_COMPLETED)
        failed = next((future for future in done if future.exception() is not None), None)
        if failed is not None:
            running = sum(future.running() for future in pending)
            logging.getLogger(__name__).error("%s; the rest not started, waiting for the %d running",
                                              failed.exception(), running)
            pool.shutdown(wait=False, cancel_futures=True)
            raise failed.exception()
