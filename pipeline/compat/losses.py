"""Compatibility losses (design notes, section 2), as pure functions on tensors.

Notation: ``f2`` model 2's features, ``W2`` its classifier rows, ``c_j`` and ``b_j`` the old
space's class centers and boundary angles, ``y`` the labels in model 2's label map.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.compat.statistics import OldSpaceStats
from pipeline.config import CompatConfig
from pipeline.model.transformations import TRANSFORMS_OF


class DimensionMismatch(ValueError):
    """Two feature spaces of different dimension compared without a transformation."""


def check_same_dim(new_dim: int, old_dim: int, what: str) -> None:
    if new_dim != old_dim:
        raise DimensionMismatch(f"{what}: new feature dimension {new_dim} differs from old dimension {old_dim}; "
                                "direct compatibility needs equal dimensions (use a transformation)")


def alignment_loss(class_weights: torch.Tensor, centers: torch.Tensor, class_mask: torch.Tensor) -> torch.Tensor:
    """``mean_{j in mask} || norm(W2_j) - c_j ||^2`` (= 2 - 2 cos), over the masked classes."""
    distance = (F.normalize(class_weights, dim=1) - centers).pow(2).sum(dim=1)
    return distance[class_mask].mean()


def boundary_loss(features: torch.Tensor, labels: torch.Tensor, centers: torch.Tensor, boundaries: torch.Tensor,
                  margin: float, class_mask: torch.Tensor) -> torch.Tensor:
    """``mean_i max(0, angle(norm(f_i), c_{y_i}) - (b_{y_i} - m))`` over samples of masked classes.

    Angles are in radians; a batch with no sample of a masked class gives 0 (still a graph node).
    """
    cosine = (F.normalize(features, dim=1) * centers[labels]).sum(dim=1)
    angle = torch.acos(cosine.clamp(-1 + 1e-6, 1 - 1e-6))
    hinge = F.relu(angle - (boundaries[labels] - margin))
    keep = class_mask[labels]
    return (hinge * keep).sum() / keep.sum().clamp(min=1)


def influence_loss(features: torch.Tensor, labels: torch.Tensor, old_head: nn.Module) -> torch.Tensor:
    """BCT influence loss ``CE(W1' f2, y)`` through the frozen old classifier ``old_head``."""
    return F.cross_entropy(old_head(features, labels), labels)


def influence_weights(stats: OldSpaceStats, old_weight: torch.Tensor, old_classes: list[str]) -> torch.Tensor:
    """``W1'``: model 1's classifier rows for the classes it knows, in model 2's label order, and
    a pseudo-classifier row (the mean old feature of the class) for every class it does not."""
    rows = []
    for j, name in enumerate(stats.classes):
        if name in old_classes:
            rows.append(old_weight[old_classes.index(name)].detach())
        else:
            rows.append(torch.as_tensor(stats.feature_means[j], dtype=old_weight.dtype))
    return torch.stack(rows)


def regression_loss(mapped: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Point-wise regression ``mean_i || norm(mapped_i) - norm(target_i) ||^2`` on the same images
    (the L2 baseline with ``mapped = f2``, the RBT-style CMC baseline with ``mapped = T21(f2)``)."""
    return (F.normalize(mapped, dim=1) - F.normalize(targets, dim=1)).pow(2).sum(dim=1).mean()


LCE_METHODS = ("lce_direct", "lce_backward", "lce_forward", "lce_bidirectional")


def map_rows(transform: nn.Module, *parts: torch.Tensor) -> list[torch.Tensor]:
    """``transform`` applied to several row sets, each L2-normalised, in one batch: its batch
    norms then see one set of statistics (features and class weights are mapped alike, whatever
    their norms), as at encode time where it maps unit vectors too."""
    mapped = transform(torch.cat([F.normalize(part, dim=1) for part in parts]))
    return list(mapped.split([len(p) for p in parts]))


def lce_terms(method: str, features: torch.Tensor, labels: torch.Tensor, class_weights: torch.Tensor,
              centers: torch.Tensor, boundaries: torch.Tensor, margin: float, class_mask: torch.Tensor,
              transforms: nn.ModuleDict) -> tuple[torch.Tensor, torch.Tensor]:
    """LCE alignment and boundary terms of one manner (design notes, section 2).

    - direct: ``d(norm(W2_j), c_j)``, boundary on ``f2``;
    - backward: ``d(norm(T21(W2_j)), c_j)``, boundary on ``T21(f2)``;
    - forward: ``d(norm(W2_j), norm(T12(c_j)))``, boundary on ``f2`` around ``norm(T12(c_y))``
      with the old boundary angle (there is no new->old map in this manner);
    - bidirectional: the mean of the backward and forward alignments, the backward boundary.
    """
    if method == "lce_direct":
        return (alignment_loss(class_weights, centers, class_mask),
                boundary_loss(features, labels, centers, boundaries, margin, class_mask))
    alignments = []
    if method in ("lce_backward", "lce_bidirectional"):
        mapped_features, mapped_weights = map_rows(transforms["backward_transform"], features, class_weights)
        alignments.append(alignment_loss(mapped_weights, centers, class_mask))
        boundary = boundary_loss(mapped_features, labels, centers, boundaries, margin, class_mask)
    if method in ("lce_forward", "lce_bidirectional"):
        mapped_centers = F.normalize(transforms["forward_transform"](centers), dim=1)
        alignments.append(alignment_loss(class_weights, mapped_centers, class_mask))
        if method == "lce_forward":
            boundary = boundary_loss(features, labels, mapped_centers, boundaries, margin, class_mask)
    return torch.stack(alignments).mean(), boundary


class TrainingObjective(nn.Module):
    """``L = L_cls + terms of the method``: independent, BCT, L2 or LCE in one of its manners.

    Every term is computed on every path (zero where the method has none), so that logging and
    DDP see the same graph whatever the method. The frozen old parts (BCT's classifier, L2's
    embedder) never train: no gradient, and the embedder stays in eval mode.
    """

    def __init__(self, method: str, compat: CompatConfig, stats: OldSpaceStats | None = None,
                 old_head: nn.Module | None = None, old_embedder: nn.Module | None = None) -> None:
        super().__init__()
        self.method, self.compat = method, compat
        self.old_head = old_head
        if old_head is not None:
            old_head.requires_grad_(False)
        self.old_embedder = old_embedder
        if old_embedder is not None:
            old_embedder.requires_grad_(False).eval()
        if method == "l2" and old_embedder is None:
            raise ValueError("method 'l2' needs the old model's embedder")
        if method not in ("independent", "l2"):
            if stats is None:
                raise ValueError(f"method {method!r} needs old-space statistics")
            mask = torch.as_tensor(stats.old_class_mask() if compat.old_classes_only else [True] * len(stats.classes))
            if not mask.any():
                raise ValueError(f"old_classes_only: none of the classes {stats.classes} is among the old model's "
                                 f"classes {stats.old_classes}, so no class has compatibility terms")
            self.register_buffer("centers", torch.as_tensor(stats.centers))
            self.register_buffer("boundaries", torch.as_tensor(stats.boundaries))
            self.register_buffer("class_mask", mask)
        if method == "bct" and old_head is None:
            raise ValueError("method 'bct' needs the old classifier")

    def train(self, mode: bool = True) -> "TrainingObjective":
        super().train(mode)
        if self.old_embedder is not None:
            self.old_embedder.eval()
        return self

    def forward(self, features: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor,
                class_weights: torch.Tensor, transforms: nn.ModuleDict | None = None,
                images: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        zero = features.new_zeros(())
        terms = {"cls": F.cross_entropy(logits, labels), "align": zero, "boundary": zero, "influence": zero,
                 "regression": zero}
        if self.method in LCE_METHODS:
            missing = [name for name in TRANSFORMS_OF[self.method] if transforms is None or name not in transforms]
            if missing:
                raise ValueError(f"method {self.method!r} needs the {missing} transformation(s)")
            terms["align"], terms["boundary"] = lce_terms(
                self.method, features, labels, class_weights, self.centers, self.boundaries,
                self.compat.compactness_margin, self.class_mask, transforms)
        elif self.method == "bct":
            terms["influence"] = influence_loss(features, labels, self.old_head)
        elif self.method == "l2":
            if images is None:
                raise ValueError("method 'l2' needs the batch's images for the old model's forward pass")
            with torch.no_grad():
                old_features = self.old_embedder(images)
            terms["regression"] = regression_loss(features, old_features)
        terms["loss"] = (terms["cls"] + self.compat.lambda_align * terms["align"]
                         + self.compat.lambda_boundary * terms["boundary"]
                         + self.compat.lambda_influence * terms["influence"]
                         + self.compat.lambda_regression * terms["regression"])
        return terms
