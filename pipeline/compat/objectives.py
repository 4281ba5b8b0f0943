"""Objectives built from the catalogue: the terms of a method, weighted and added up.

Every term is computed on every path (zero where the method has none), so that logging and DDP
see the same graph whatever the method; the weights are the config's lambdas
(``pipeline.config.CompatConfig`` says which reduction each refers to).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.compat.losses import (
    CmcBatch,
    RetrievalMemory,
    TrainingBatch,
    pulled_class_mask,
    running_boundaries,
    warn_margin,
    warn_running_margin,
)
from pipeline.compat.methods import Kind, Method, method_named
from pipeline.compat.statistics import OldSpaceStats
from pipeline.config import CompatConfig

TRAINING_TERMS = ("align", "boundary", "influence", "regression")
CMC_TERMS = ("align_21", "boundary_21", "align_12", "boundary_12", "regression", "influence_12", "retrieval_21",
             "regression_21", "retrieval_12", "regression_12")


class TrainingObjective(nn.Module):
    """``L = L_cls + lambda_a L_align + lambda_b L_bound + lambda_i L_influence + lambda_r L_regression``
    with the terms of ``method`` (a catalogue entry or its name).

    The frozen old parts (BCT's classifier, L2's embedder) never train: no gradient, and the
    embedder stays in eval mode. A method that reads the old features (forward) keeps the new
    space's running boundary angles (``losses.running_boundaries``) in the buffer
    ``new_boundaries``, updated by every training-mode call; each worker keeps its own estimate
    from its shard (they are not all-reduced: a quantile of one shard is as good an estimate), and
    it is not part of a checkpoint, so a resumed run measures them again from its first batches.
    """

    def __init__(self, method: Method | str, compat: CompatConfig, stats: OldSpaceStats | None = None,
                 old_head: nn.Module | None = None, old_embedder: nn.Module | None = None) -> None:
        super().__init__()
        self.method = method_named(method, Kind.TRAIN) if isinstance(method, str) else method
        self.compat = compat
        self.old_head = old_head
        if old_head is not None:
            old_head.requires_grad_(False)
        self.old_embedder = old_embedder
        if old_embedder is not None:
            old_embedder.requires_grad_(False).eval()
        name = self.method.name
        if self.method.needs_old_forward and old_embedder is None:
            raise ValueError(f"method {name!r} needs the old model's embedder")
        self.has_statistics = self.method.needs_statistics
        if self.has_statistics:
            if stats is None:
                raise ValueError(f"method {name!r} needs old-space statistics")
            mask = torch.as_tensor(stats.class_mask(compat.old_classes_only))
            if not mask.any():
                raise ValueError(f"old_classes_only: none of the classes {stats.classes} is among the old model's "
                                 f"classes {stats.old_classes}, so no class has compatibility terms")
            if self.method.bounds_features and compat.lambda_boundary > 0:
                warn_margin(stats, compat.compactness_margin, compat.old_classes_only)
            self.register_buffer("centers", torch.as_tensor(stats.centers))
            self.register_buffer("boundaries", torch.as_tensor(stats.boundaries))
            self.register_buffer("class_mask", mask)
            self.register_buffer("pulled_classes", torch.as_tensor(pulled_class_mask(stats, compat)))
            if self.method.needs_old_features:
                self.register_buffer("new_boundaries", torch.full((len(stats.classes),), float("nan")))
                self.stats_classes = list(stats.classes)
        if self.method.needs_old_classifier and old_head is None:
            raise ValueError(f"method {name!r} needs the old classifier")

    def train(self, mode: bool = True) -> "TrainingObjective":
        super().train(mode)
        if self.old_embedder is not None:
            self.old_embedder.eval()
        return self

    def forward(self, features: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor,
                class_weights: torch.Tensor, transforms: nn.ModuleDict | None = None,
                images: torch.Tensor | None = None, old_features: torch.Tensor | None = None
                ) -> dict[str, torch.Tensor]:
        missing = [name for name in self.method.trains if transforms is None or name not in transforms]
        if missing:
            raise ValueError(f"method {self.method.name!r} needs the {missing} transformation(s)")
        if self.method.reads_old_features(self.compat) and old_features is None:
            raise ValueError(f"method {self.method.name!r} needs the old model's features of the batch")
        new_boundaries = None
        if self.method.needs_old_features:  # the forward manner's running boundaries
            if self.training:
                first = bool(torch.isnan(self.new_boundaries).all())
                self.new_boundaries = running_boundaries(self.new_boundaries, features, labels, class_weights,
                                                         self.compat.boundary_quantile, self.compat.running_momentum)
                if first and self.compat.lambda_boundary > 0:
                    warn_running_margin(self.new_boundaries, self.compat.forward_margin, self.stats_classes)
            new_boundaries = self.new_boundaries
        statistics = self.has_statistics
        batch = TrainingBatch(
            features=features, labels=labels, class_weights=class_weights, transforms=transforms, images=images,
            centers=self.centers if statistics else None, boundaries=self.boundaries if statistics else None,
            class_mask=self.class_mask if statistics else None, margin=self.compat.compactness_margin,
            forward_margin=self.compat.forward_margin, old_head=self.old_head, old_embedder=self.old_embedder,
            old_features=old_features, new_boundaries=new_boundaries,
            target_pull=self.compat.target_pull if self.method.pulls_features else None,
            pulled_classes=self.pulled_classes if statistics else None)
        zero = features.new_zeros(())
        terms = {"cls": F.cross_entropy(logits, labels), **dict.fromkeys(TRAINING_TERMS, zero),
                 **self.method.terms(batch)}
        terms["loss"] = (terms["cls"] + self.compat.lambda_align * terms["align"]
                         + self.compat.lambda_boundary * terms["boundary"]
                         + self.compat.lambda_influence * terms["influence"]
                         + self.compat.lambda_regression * terms["regression"])
        return terms


def cmc_terms(method: Method | str, old_features: torch.Tensor, new_features: torch.Tensor, labels: torch.Tensor,
              old_space: OldSpaceStats, new_space: OldSpaceStats, compat: CompatConfig,
              transforms: nn.ModuleDict, memory: RetrievalMemory | None = None) -> dict[str, torch.Tensor]:
    """The loss terms of one CMC batch of ``method`` (``memory``: the rows a retrieval term
    searches); ``loss`` is their weighted sum ``lambda_a (align_21 + align_12) + lambda_b
    (boundary_21 + boundary_12) + lambda_r regression + lambda_i influence_12 + retrieval_21 +
    retrieval_12 + r21 regression_21 + r12 regression_12`` (``r``: ``compat.retrieval``'s per
    transformation)."""
    method = method_named(method, Kind.CMC) if isinstance(method, str) else method
    zero = new_features.new_zeros(())
    batch = CmcBatch(old_features, new_features, labels, old_space, new_space, compat, transforms, memory)
    terms = {**dict.fromkeys(CMC_TERMS, zero), **method.terms(batch)}
    retrieval = compat.retrieval
    terms["loss"] = (compat.lambda_align * (terms["align_21"] + terms["align_12"])
                     + compat.lambda_boundary * (terms["boundary_21"] + terms["boundary_12"])
                     + compat.lambda_regression * terms["regression"]
                     + compat.lambda_influence * terms["influence_12"]
                     + terms["retrieval_21"] + terms["retrieval_12"]
                     + retrieval.backward.lambda_regression * terms["regression_21"]
                     + retrieval.forward.lambda_regression * terms["regression_12"])
    return terms
