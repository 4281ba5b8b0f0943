"""Ray Train checkpoints of a training loop: one file per epoch, resumable only under its config.

The state holds the trained module, optimizer, scheduler, torch RNG, the epoch and the hash of
the config it was trained under; resuming under another config is refused rather than mixed.
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
           what: str, device: torch.device | str = "cpu") -> int:
    """Load the run's last checkpoint into the given objects; the epoch to start from (0 when fresh)."""
    checkpoint = ray.train.get_checkpoint()
    if not checkpoint:
        return 0
    with checkpoint.as_directory() as folder:
        state = torch.load(Path(folder) / CHECKPOINT_FILE, map_location=device, weights_only=True)
    if state.get("config_hash") != config_digest:
        raise ValueError(f"{what}: this Ray Train run was started with another config or inputs; resuming it "
                         "would mix the two (give another run name)")
    module.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    return state["epoch"] + 1


def report_epoch(metrics: dict[str, float], epoch: int, module: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler: Any, config_digest: str, with_checkpoint: bool = True) -> None:
    """``ray.train.report`` of one epoch; the worker that saves (rank 0) attaches the checkpoint."""
    if not with_checkpoint:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as folder:
        torch.save({"model": module.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "epoch": epoch, "rng": torch.get_rng_state(),
                    "config_hash": config_digest}, Path(folder) / CHECKPOINT_FILE)
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(folder))


def final_weights(result: ray.train.Result) -> dict[str, torch.Tensor]:
    """The trained module's state dict from a finished run's last checkpoint."""
    with result.checkpoint.as_directory() as folder:
        return torch.load(Path(folder) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)["model"]
