"""Ray Train checkpoints of a training loop: one file per epoch, resumable only under its config.

The state holds the trained module, optimizer, scheduler, gradient scaler (mixed precision),
torch RNG (CPU and CUDA), the epoch, the hash of the config it was trained under (resuming under
another config is refused rather than mixed) and the epochs' metrics MLflow has not taken yet.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import ray.train
import torch
from ray.train import Checkpoint

CHECKPOINT_FILE = "checkpoint.pt"


def resume(module: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, config_digest: str,
           what: str, device: torch.device | str = "cpu",
           scaler: torch.amp.GradScaler | None = None) -> tuple[int, list[dict[str, Any]]]:
    """Load the run's last checkpoint into the given objects; the epoch to start from (0 when
    fresh) and the metrics of earlier epochs that MLflow did not take (``EpochLogger.pending``)."""
    checkpoint = ray.train.get_checkpoint()
    if not checkpoint:
        return 0, []
    with checkpoint.as_directory() as folder:
        path = Path(folder) / CHECKPOINT_FILE
        try:
            state = torch.load(path, map_location=device, weights_only=True)
        except Exception as error:  # missing, truncated, or not a checkpoint: torch raises several types
            raise ValueError(f"{what}: cannot resume from {checkpoint.path}/{CHECKPOINT_FILE} "
                             f"({type(error).__name__}: {str(error).splitlines()[0]}); remove that checkpoint "
                             "folder or give another run name") from None
    if state.get("config_hash") != config_digest:
        raise ValueError(f"{what}: this Ray Train run was started with another config or inputs; resuming it "
                         "would mix the two (give another run name)")
    module.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"].cpu())
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda_rng"].cpu())
    return state["epoch"] + 1, state.get("unlogged", [])


def report_epoch(metrics: dict[str, float], epoch: int, module: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler: Any, config_digest: str, with_checkpoint: bool = True,
                 scaler: torch.amp.GradScaler | None = None, unlogged: list[dict[str, Any]] | None = None) -> None:
    """``ray.train.report`` of one epoch; the worker that saves (rank 0) attaches the checkpoint,
    which carries ``unlogged``, the epochs' metrics MLflow has not taken yet."""
    if not with_checkpoint:
        ray.train.report(metrics)
        return
    state = {"model": module.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "scaler": scaler.state_dict() if scaler is not None else {}, "epoch": epoch,
             "rng": torch.get_rng_state(), "config_hash": config_digest, "unlogged": unlogged or []}
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state()
    with tempfile.TemporaryDirectory() as folder:
        torch.save(state, Path(folder) / CHECKPOINT_FILE)
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(folder))


def final_weights(result: ray.train.Result) -> dict[str, torch.Tensor]:
    """The trained module's state dict from a finished run's last checkpoint."""
    with result.checkpoint.as_directory() as folder:
        return torch.load(Path(folder) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)["model"]
