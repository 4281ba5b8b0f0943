"""One optimisation step and the precision it runs in, shared by every training loop.

Free of Ray, so that a plain PyTorch loop (``scripts/gpu_check.py``, benchmarks) runs the same
step as the Ray Train workers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import nn


class NonFiniteLoss(FloatingPointError):
    """A NaN or infinite loss: the run stops, keeping its last good checkpoint."""


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The forward pass's autocast dtype for ``precision`` on ``device``; None: float32."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def autocast(dtype: torch.dtype | None, device: torch.device) -> AbstractContextManager:
    return torch.autocast(device.type, dtype=dtype) if dtype else nullcontext()


class Autocast(nn.Module):
    """``module``'s forward pass under autocast to ``dtype``, its output back in float32 (the
    precision the compatibility terms run in)."""

    def __init__(self, module: nn.Module, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.module, self.dtype, self.device = module, dtype, device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with autocast(self.dtype, self.device):
            return self.module(x).float()


def optimizer_and_schedule(parameters: Iterable[torch.nn.Parameter], lr: float, weight_decay: float,
                           total_steps: int) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.OneCycleLR]:
    """AdamW and its one-cycle schedule (peak ``lr`` after 15 % of ``total_steps``)."""
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
    return optimizer, torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total_steps, pct_start=0.15)


def check_gradients(optimizer: torch.optim.Optimizer, where: Callable[[], str]) -> None:
    """Refuse a step whose gradients hold a NaN or an infinity, naming the first such parameter
    (its group and position in the optimizer, and its shape)."""
    grads = [(group_index, index, p.grad) for group_index, group in enumerate(optimizer.param_groups)
             for index, p in enumerate(group["params"]) if p.grad is not None]
    if not grads:
        return
    finite = torch.stack([torch.isfinite(grad).all() for _, _, grad in grads])
    if not bool(finite.all()):
        group_index, index, grad = grads[int((~finite).nonzero()[0])]
        raise NonFiniteLoss(f"non-finite gradient of parameter {index} of group {group_index} "
                            f"(shape {tuple(grad.shape)}) with a finite {where()}")


def optimizer_step(terms: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer, scheduler: Any,
                   totals: dict[str, float], where: Callable[[], str],
                   scaler: torch.amp.GradScaler | None = None) -> None:
    """One step on ``terms["loss"]``, adding every term to ``totals``; a NaN or infinite loss, or
    a finite loss with a NaN or infinite gradient, stops the run with ``where()`` (which step,
    which batch) before any weight changes. ``scaler`` (fp16) scales the loss and skips steps
    whose gradients overflow (that is its job, so those are not checked)."""
    if not torch.isfinite(terms["loss"]):
        raise NonFiniteLoss(f"loss {terms['loss'].item()}: {where()}")
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        terms["loss"].backward()
        check_gradients(optimizer, lambda: f"loss {terms['loss'].item():.6g}: {where()}")
        optimizer.step()
    else:
        scaler.scale(terms["loss"]).backward()
        scaler.step(optimizer)
        scaler.update()
    scheduler.step()
    for key, value in terms.items():
        totals[key] = totals.get(key, 0.0) + value.item()
