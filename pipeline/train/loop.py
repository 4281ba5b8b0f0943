"""The epoch loop every Ray Train worker runs, whatever it fits (``WorkerFit`` says what).

It reads top to bottom: budget, optimizer and schedule, resume from the run's last checkpoint,
then epochs of seeded shuffled batches (of the rows the worker holds, or of its streamed shard:
``pipeline.train.stream``), each step through ``pipeline.compat.steps.optimizer_step``
(a NaN or infinite loss stops the run before any weight changes). Every worker reports once per
epoch; rank 0 alone validates, logs to MLflow (before the checkpoint: a death in between logs
an epoch twice, never loses it; what a tracking server that is down did not take rides in the
checkpoint until it is back) and saves the checkpoint.
"""

from __future__ import annotations

import itertools
import logging
import math
import resource
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import ray.train
import ray.train.torch
import torch
from torch import nn

from pipeline.compat.steps import autocast_dtype, optimizer_and_schedule, optimizer_step
from pipeline.config import FitConfig
from pipeline.tracking import EpochLogger, flat_params
from pipeline.train.checkpoints import report_epoch, resume

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Worker:
    """Where this worker runs: its rank among ``world`` workers, its device and the forward
    pass's autocast dtype (None: float32)."""

    rank: int
    world: int
    device: torch.device
    precision: torch.dtype | None


@dataclass(frozen=True)
class RunRecord:
    """What ties a fit's epochs to their records: the hash a checkpoint may be resumed under
    (``pipeline.train.driver.config_hash``) and the MLflow run the epochs are logged to, which the
    driver sets (None where nothing logs them: a Tune trial reports to Tune)."""

    config_hash: str
    tracking_uri: str | None = None
    mlflow_run_id: str | None = None


@dataclass(frozen=True)
class WorkerFit:
    """What one kind of fit hands the epoch loop on one worker."""

    what: str                     # names the fit in messages: "model 'lce'", "cmc 'cmc_lce'"
    module: nn.Module             # what trains and each checkpoint holds
    prepared: nn.Module           # the module as the step calls it (DDP-wrapped when world > 1)
    rows: int                     # rows of this worker's shard
    terms: Callable[[Any], dict[str, torch.Tensor]]  # the loss terms of a batch
    describe: Callable[[Any], str]                    # a batch, for messages
    validate: Callable[[], dict[str, float]] | None = None     # rank 0's validation after each epoch
    # (epoch, passes) -> the epoch's batches, for a shard streamed to the worker; None: the rows it
    # holds, as tensors of row positions in seeded shuffles (epoch_order)
    batches: Callable[[int, int], Iterable[Any]] | None = None


def start_worker(cfg: FitConfig) -> Worker:
    """This worker's place in the run, with torch using the CPUs its workers reserve."""
    torch.set_num_threads(max(1, int(cfg.cpus_per_worker)))
    context = ray.train.get_context()
    device = ray.train.torch.get_device()
    return Worker(context.get_world_rank(), context.get_world_size(), device, autocast_dtype(cfg.precision, device))


def passes_per_epoch(cfg: FitConfig, batches_per_pass: int) -> int:
    """Passes over the shard in one epoch: 1, or more so that a small dataset still gets
    ``cfg.min_steps`` steps in ``cfg.epochs`` epochs (and as many checkpoints, not hundreds)."""
    return max(1, math.ceil(cfg.min_steps / (cfg.epochs * batches_per_pass)))


def epoch_order(rows: int, batch_size: int, passes: int, seed: int, epoch: int) -> torch.Tensor:
    """The shard rows of one epoch in batch order: ``passes`` seeded shuffles, each cut to whole
    batches."""
    shuffle = torch.Generator().manual_seed(seed * 1000 + epoch)
    return torch.cat([torch.randperm(rows, generator=shuffle)[: rows // batch_size * batch_size]
                      for _ in range(passes)])


def epoch_batches(fit: WorkerFit, batch_size: int, passes: int, seed: int, epoch: int) -> Iterator[Any]:
    """The batches of one epoch: ``passes * (rows // batch_size)`` of them, from the stream or
    from the held rows' shuffles; a stream that ends early is an error (the schedule counts on
    every step)."""
    steps = passes * (fit.rows // batch_size)
    if fit.batches is None:
        order = epoch_order(fit.rows, batch_size, passes, seed, epoch)
        yield from (order[step * batch_size : (step + 1) * batch_size] for step in range(steps))
        return
    given = 0
    for batch in itertools.islice(fit.batches(epoch, passes), steps):
        given += 1
        yield batch
    if given < steps:
        raise ValueError(f"{fit.what}: the streamed shard gave {given} batches in epoch {epoch}, {steps} expected "
                         f"({fit.rows} rows, {passes} passes of batch {batch_size})")


def mean_over_workers(totals: dict[str, float], steps: int, worker: Worker) -> dict[str, float]:
    """Per-step means of the epoch's loss terms, averaged over all workers."""
    values = torch.tensor(list(totals.values()), dtype=torch.float64, device=worker.device) / steps
    if worker.world > 1:
        torch.distributed.all_reduce(values)
        values /= worker.world
    return {f"train_{key}": float(value) for key, value in zip(totals, values.tolist())}


def run_epochs(fit: WorkerFit, cfg: FitConfig, worker: Worker, record: RunRecord) -> None:
    """Train ``fit`` for the epochs of ``cfg`` that the run's last checkpoint has not done."""
    batch_size = cfg.worker_batch_size
    batches_per_pass = fit.rows // batch_size
    if batches_per_pass == 0:
        raise ValueError(f"{fit.what}: {fit.rows} training rows per worker, fewer than one batch of {batch_size} "
                         f"({cfg.batch_size} over {worker.world} workers)")
    passes = passes_per_epoch(cfg, batches_per_pass)
    steps = passes * batches_per_pass
    optimizer, scheduler = optimizer_and_schedule(fit.prepared.parameters(), cfg.lr, cfg.weight_decay,
                                                  cfg.epochs * steps)
    scaler = torch.amp.GradScaler(worker.device.type) if worker.precision == torch.float16 else None
    digest = record.config_hash
    start_epoch, unlogged = resume(fit.module, optimizer, scheduler, digest, fit.what, worker.device, scaler)
    lead = worker.rank == 0
    if start_epoch and lead:
        log.info("[%s] resuming from the checkpoint of epoch %d", cfg.name, start_epoch - 1)
    tracker = (EpochLogger(record.tracking_uri, record.mlflow_run_id,
                           {**flat_params(cfg.model_dump()), "passes_per_epoch": passes}, unlogged) if lead else None)
    for epoch in range(start_epoch, cfg.epochs):
        fit.prepared.train()
        totals: dict[str, float] = {}
        started = time.perf_counter()
        for step, batch in enumerate(epoch_batches(fit, batch_size, passes, cfg.seed, epoch)):
            optimizer_step(fit.terms(batch), optimizer, scheduler, totals,
                           lambda: f"{fit.what} at epoch {epoch} step {step}; {fit.describe(batch)}", scaler)
            if lead and (step + 1) % max(1, steps // 4) == 0:
                log.info("[%s] epoch %d/%d step %d/%d loss %.4f (%.0f rows/s)", cfg.name, epoch + 1, cfg.epochs,
                         step + 1, steps, totals["loss"] / (step + 1),
                         (step + 1) * cfg.batch_size / (time.perf_counter() - started))
        metrics = mean_over_workers(totals, steps, worker)
        metrics.update(epoch=epoch, resumed_from_epoch=start_epoch,
                       images_per_s=steps * cfg.batch_size / (time.perf_counter() - started),
                       peak_memory_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # rank 0's, so far
        if lead and fit.validate:
            metrics.update(fit.validate())
        if tracker:  # before the checkpoint: a death in between logs this epoch twice, never loses it
            tracker.log_epoch(metrics, epoch)
        report_epoch(metrics, epoch, fit.module, optimizer, scheduler, digest, with_checkpoint=lead, scaler=scaler,
                     unlogged=tracker.pending if tracker else None)
