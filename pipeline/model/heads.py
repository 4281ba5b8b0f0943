"""Classification heads: softmax, CosFace and ArcFace.

Every head owns a weight matrix ``weight`` [num_classes, dim] whose rows are the class
proxies that LCE aligns with the old class centers. The margin heads normalise both weights
and features: logits are ``s * cos`` with the margin applied to the target class only.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config import HeadConfig


class SoftmaxHead(nn.Module):
    """Plain linear classifier without bias: ``logits = f W^T``."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, dim))
        nn.init.normal_(self.weight, std=0.01)

    def forward(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return features @ self.weight.t()


class CosFaceHead(SoftmaxHead):
    """CosFace (additive cosine margin): target logit ``s (cos - m)``, others ``s cos``."""

    def __init__(self, dim: int, num_classes: int, scale: float, margin: float) -> None:
        super().__init__(dim, num_classes)
        self.scale, self.margin = scale, margin

    def cosine(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(features, dim=1) @ F.normalize(self.weight, dim=1).t()

    def forward(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        cosine = self.cosine(features)
        if labels is not None:
            cosine = cosine - self.margin * F.one_hot(labels, cosine.shape[1]).to(cosine.dtype)
        return self.scale * cosine


class ArcFaceHead(CosFaceHead):
    """ArcFace (additive angular margin): target logit ``s cos(theta + m)``.

    Where ``theta + m`` would pass pi the target logit falls back to ``cos theta - m sin m``
    so that it stays monotonic in theta (the insightface convention).
    """

    def forward(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        cosine = self.cosine(features)
        if labels is None:
            return self.scale * cosine
        target = cosine.gather(1, labels[:, None]).clamp(-1 + 1e-7, 1 - 1e-7)
        sine = torch.sqrt(1 - target * target)
        with_margin = target * math.cos(self.margin) - sine * math.sin(self.margin)
        with_margin = torch.where(target > math.cos(math.pi - self.margin), with_margin,
                                  target - self.margin * math.sin(self.margin))
        cosine = cosine.scatter(1, labels[:, None], with_margin)
        return self.scale * cosine


def build_head(config: HeadConfig, dim: int, num_classes: int) -> SoftmaxHead:
    if config.kind == "softmax":
        return SoftmaxHead(dim, num_classes)
    head_type = CosFaceHead if config.kind == "cosface" else ArcFaceHead
    return head_type(dim, num_classes, config.scale, config.margin)
