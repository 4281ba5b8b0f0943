"""Process set-up shared by the jobs: logging and connecting to (or starting) Ray."""

from __future__ import annotations

import logging
import os

import ray


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def init_ray(address: str | None = None) -> None:
    """Join the cluster at ``address`` (or ``RAY_ADDRESS``, as under ``ray job submit``), else
    start a local one with this machine's cores."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    # Workers of this project find `pipeline/` through the job's working directory.
    runtime_env = {"env_vars": {"PYTHONPATH": os.getcwd()}} if not address else None
    # The dashboard (on 127.0.0.1) serves the state API that Ray Train's placement-group cleanup queries.
    ray.init(address=address, runtime_env=runtime_env)
    logging.getLogger(__name__).info("ray: %s", ray.cluster_resources())


def runs_at_once(per_run: dict[str, float], limit: int | None = None) -> int:
    """How many runs that each need ``per_run`` resources (``{"CPU": 2, "GPU": 1}``) the cluster
    holds side by side, at most ``limit`` and at least 1 (which then waits for its resources)."""
    available = ray.cluster_resources()
    fits = min((int(available.get(key, 0) // need) for key, need in per_run.items() if need > 0), default=1)
    return max(1, min(fits, limit) if limit else fits)
