"""Feature transformations between two embedding spaces (docs/design.md, 'Transformations').

``T21`` maps model 2's space to model 1's (backward), ``T12`` model 1's to model 2's (forward).
The RBT-style block is ``y = skip(x) + sum_p path_p(x)`` with P parallel paths
``Linear(d_in, h) -> BN -> PReLU -> Linear(h, h) -> BN -> PReLU -> Linear(h, d_out) -> BN -> PReLU``
and ``skip`` the identity when ``d_in == d_out``, a linear projection otherwise; K blocks stacked.
K = 0 is the identity, which only exists between spaces of one dimension.
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.config import TransformConfig


def _path(d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(d_in, hidden), nn.BatchNorm1d(hidden), nn.PReLU(),
        nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.PReLU(),
        nn.Linear(hidden, d_out), nn.BatchNorm1d(d_out), nn.PReLU(),
    )


class TransformBlock(nn.Module):
    """One residual block with ``paths`` parallel paths of width ``hidden``."""

    def __init__(self, d_in: int, d_out: int, paths: int, hidden: int) -> None:
        super().__init__()
        self.skip: nn.Module = nn.Identity() if d_in == d_out else nn.Linear(d_in, d_out, bias=False)
        self.paths = nn.ModuleList(_path(d_in, hidden, d_out) for _ in range(paths))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + sum(path(x) for path in self.paths)


class FeatureTransform(nn.Module):
    """``K`` blocks from ``d_in`` to ``d_out``; ``K = 0`` is the identity."""

    def __init__(self, d_in: int, d_out: int, config: TransformConfig) -> None:
        super().__init__()
        if config.blocks == 0 and d_in != d_out:
            raise ValueError(f"an identity transformation cannot map dimension {d_in} to dimension {d_out}: "
                             "use at least one block")
        dims = [d_in] + [d_out] * config.blocks
        self.blocks = nn.Sequential(*(TransformBlock(a, b, config.paths, config.hidden) for a, b in zip(dims, dims[1:])))
        self.d_in, self.d_out = d_in, d_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


# The names of the two transformations, as the keys of ``EmbeddingModel.transforms`` and of a CMC
# artifact's state dict: the backward transformation is T21 (new -> old), the forward one T12.
BACKWARD = "backward_transform"
FORWARD = "forward_transform"


def build_transforms(names: tuple[str, ...] | list[str], new_dim: int, old_dim: int,
                     config: TransformConfig) -> dict[str, FeatureTransform]:
    """Freshly initialised transformations of the given ``names`` (``BACKWARD``, ``FORWARD``), in
    that order (which fixes the order their weights are drawn in)."""
    ends = {BACKWARD: (new_dim, old_dim), FORWARD: (old_dim, new_dim)}
    unknown = [name for name in names if name not in ends]
    if unknown:
        raise ValueError(f"unknown transformations {unknown}: expected {sorted(ends)}")
    return {name: FeatureTransform(*ends[name], config) for name in names}
