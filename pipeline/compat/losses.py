"""Compatibility losses (docs/design.md, 'The method'), as pure functions on tensors, and the terms
each method adds to its objective (``pipeline.compat.methods`` says which method uses which).

Notation: ``f2`` model 2's features, ``W2`` its classifier rows, ``c_j`` and ``b_j`` the old
space's class centers and boundary angles, ``y`` the labels in model 2's label map.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.compat.statistics import OldSpaceStats
from pipeline.config import CompatConfig
from pipeline.model.transformations import BACKWARD, FORWARD

log = logging.getLogger(__name__)


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


def angles_to(units: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """The angle (radians) between each row of ``units`` and the same row of ``centers``, all
    unit vectors: ``atan2(|u - (u.c) c|, u.c)``, the d-dimensional ``atan2(|u x c|, u.c)``. Its
    gradient stays finite and exact near 0 and pi, where a clamped ``acos`` is off by up to
    1.4e-3 rad and has no gradient at all."""
    cosine = (units * centers).sum(dim=1)
    sine = (units - cosine[:, None] * centers).norm(dim=1)
    return torch.atan2(sine, cosine)


def warn_margin(stats: OldSpaceStats, margin: float, old_classes_only: bool, space: str = "old") -> list[str]:
    """The classes with compatibility terms whose boundary the compactness margin reaches
    (``b_j - m <= 0``), logged as a warning: their bound is clamped at 0 (``boundary_loss``), so
    that the term pulls each of their features onto the center rather than into a cone."""
    mask = stats.class_mask(old_classes_only)
    reached = [j for j in range(len(stats.classes)) if mask[j] and float(stats.boundaries[j]) - margin <= 0]
    if reached:
        shown = ", ".join(f"{stats.classes[j]!r} (b = {float(stats.boundaries[j]):.4f} rad)" for j in reached)
        log.warning("compactness_margin %g rad reaches the %s-space boundary of %d class(es): %s; their bound "
                    "b - m is clamped at 0 (every feature pulled onto the center): lower the margin to keep a cone",
                    margin, space, len(reached), shown)
    return [stats.classes[j] for j in reached]


def warn_running_margin(boundaries: torch.Tensor, margin: float, classes: list[str]) -> list[str]:
    """The forward manner's first batch: the classes whose new-space running angle the margin
    already reaches (their bound is clamped at 0, as ``warn_margin`` says of the old space)."""
    reached = [classes[j] for j, b in enumerate(boundaries.tolist()) if b == b and b - margin <= 0]
    if reached:
        log.warning("new-space margin %g rad reaches the first batch's new-space boundary of %d class(es): %s; "
                    "their bound is clamped at 0 (lower compat.new_space_margin to keep a cone)", margin,
                    len(reached), ", ".join(map(repr, reached)))
    return reached


def boundary_loss(features: torch.Tensor, labels: torch.Tensor, centers: torch.Tensor, boundaries: torch.Tensor,
                  margin: float, class_mask: torch.Tensor) -> torch.Tensor:
    """``mean_i max(0, angle(norm(f_i), c_{y_i}) - max(b_{y_i} - m, 0))`` over samples of masked classes.

    Angles are in radians (``angles_to``); a bound the margin would push below 0 is 0, the
    center (``warn_margin`` names those classes; the gradient is the same as without the clamp).
    A batch with no sample of a masked class gives 0 (still a graph node).
    """
    angle = angles_to(F.normalize(features, dim=1), F.normalize(centers[labels], dim=1))
    hinge = F.relu(angle - (boundaries[labels] - margin).clamp(min=0.0))
    keep = class_mask[labels]
    return (hinge * keep).sum() / keep.sum().clamp(min=1)


def influence_loss(features: torch.Tensor, labels: torch.Tensor, old_head: nn.Module) -> torch.Tensor:
    """BCT influence loss ``CE(W1' f2, y)`` through the frozen old classifier ``old_head``."""
    return F.cross_entropy(old_head(features, labels), labels)


def influence_weights(stats: OldSpaceStats, old_weight: torch.Tensor | None, old_classes: list[str]) -> torch.Tensor:
    """``W1'``: model 1's classifier rows for the classes it knows, in model 2's label order, and
    a pseudo-classifier row (the mean old feature of the class) for every class it does not;
    without a classifier (an old model known by its embeddings), a pseudo row for every class."""
    rows = []
    for j, name in enumerate(stats.classes):
        if old_weight is not None and name in old_classes:
            rows.append(old_weight[old_classes.index(name)].detach())
        else:
            rows.append(torch.as_tensor(stats.feature_means[j], dtype=torch.float32))
    return torch.stack(rows)


def center_classification(features: torch.Tensor, labels: torch.Tensor, centers: torch.Tensor,
                          scale: float) -> torch.Tensor:
    """``CE(s cos(x_i, c_j), y_i)``: ``features`` classified by their cosine to the class
    ``centers`` (BCT's influence loss with the centers as the classifier)."""
    return F.cross_entropy(scale * F.normalize(features, dim=1) @ F.normalize(centers, dim=1).T, labels)


def regression_loss(mapped: torch.Tensor, targets: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    """Point-wise regression ``mean_i || norm(mapped_i) - norm(target_i) ||^2`` on the same images
    (the L2 baseline with ``mapped = f2``, the RBT-style CMC baseline with ``mapped = T21(f2)``),
    over the rows that ``keep`` marks (all without it; 0 when it marks none)."""
    distance = (F.normalize(mapped, dim=1) - F.normalize(targets, dim=1)).pow(2).sum(dim=1)
    return distance.mean() if keep is None else (distance * keep).sum() / keep.sum().clamp(min=1)


def map_rows(transform: nn.Module, *parts: torch.Tensor) -> list[torch.Tensor]:
    """``transform`` applied to several row sets, each L2-normalised, in one batch: its batch
    norms then see one set of statistics (features and class weights are mapped alike, whatever
    their norms), as at encode time where it maps unit vectors too."""
    mapped = transform(torch.cat([F.normalize(part, dim=1) for part in parts]))
    return list(mapped.split([len(p) for p in parts]))


@dataclass(frozen=True)
class TrainingBatch:
    """What a compatible-training method's terms see of one batch of model 2, and the old space."""

    features: torch.Tensor       # f2, unnormalised [B, d2]
    labels: torch.Tensor         # y in model 2's label map [B]
    class_weights: torch.Tensor  # W2 [C, d2]
    transforms: nn.ModuleDict    # the transformations trained with model 2 (BACKWARD, FORWARD)
    images: torch.Tensor | None  # the batch's images (for an old forward pass)
    centers: torch.Tensor | None     # c_j [C, d1] (methods with statistics)
    boundaries: torch.Tensor | None  # b_j [C]
    class_mask: torch.Tensor | None  # classes with compatibility terms [C]
    margin: float                # the compactness margin m (old space)
    forward_margin: float        # the margin in the new space (T12's targets)
    old_head: nn.Module | None       # BCT: model 1's frozen classifier with pseudo rows
    old_embedder: nn.Module | None   # L2: model 1's frozen embedder
    old_features: torch.Tensor | None = None    # f1 of the batch's images [B, d1], read by id
    new_boundaries: torch.Tensor | None = None  # the new space's running boundary angles [C] (forward)
    target_pull: float | None = None            # LCE's point-wise term: its targets' pull (``pulled_regression``)
    pulled_classes: torch.Tensor | None = None  # the classes it covers [C]


def pulled_targets(features: torch.Tensor, labels: torch.Tensor, centers: torch.Tensor, pull: float) -> torch.Tensor:
    """Each feature moved the share ``pull`` of the way to its class center:
    ``norm((1 - pull) norm(f_i) + pull c_{y_i})``. A class tighter than the features' own, as
    compactness asks, that keeps which image lies near which (``pull`` 0: the features, 1: the centers)."""
    return F.normalize((1 - pull) * F.normalize(features, dim=1) + pull * centers[labels], dim=1)


def pulled_regression(in_old_space: torch.Tensor, old_features: torch.Tensor | None, labels: torch.Tensor,
                      centers: torch.Tensor, pull: float | None, pulled_classes: torch.Tensor
                      ) -> dict[str, torch.Tensor]:
    """LCE's point-wise term, with a ``pull``: the mean of ``||norm(x_i) - pulled(f1_i)||^2`` over
    the batch's samples of ``pulled_classes`` (a mask over classes), ``x`` their features in the
    old space (``f2`` direct, ``T21(f2)``); no term without a pull. A class-level target
    (alignment, a boundary at margin m) puts a query at its class's center, which finds the class's
    own items only where the old model grouped them: not for classes it never learned (measured:
    README, 'Why LCE's T21 loses on the classes the old model never saw')."""
    if pull is None:
        return {}
    if old_features is None:
        raise ValueError("target_pull: the point-wise term needs the old model's features of the batch")
    targets = pulled_targets(old_features, labels, centers, pull)
    return {"regression": regression_loss(in_old_space, targets, pulled_classes[labels])}


def pulled_class_mask(stats: OldSpaceStats, compat: CompatConfig) -> np.ndarray:
    """The classes whose samples LCE's point-wise term covers (``compat.pull_classes``)."""
    return ~stats.old_class_mask() if compat.pull_classes == "unseen" else np.ones(len(stats.classes), dtype=bool)


def lce_direct_terms(batch: TrainingBatch) -> dict[str, torch.Tensor]:
    """Direct: ``d(norm(W2_j), c_j)``, boundary on ``f2`` (and with a ``target_pull``, ``f2``'s point-wise term)."""
    return {"align": alignment_loss(batch.class_weights, batch.centers, batch.class_mask),
            "boundary": boundary_loss(batch.features, batch.labels, batch.centers, batch.boundaries, batch.margin,
                                      batch.class_mask),
            **pulled_regression(batch.features, batch.old_features, batch.labels, batch.centers, batch.target_pull,
                                batch.pulled_classes)}


def _backward(batch: TrainingBatch) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Backward alignment ``d(norm(T21(W2_j)), c_j)``, boundary on ``T21(f2)`` and, with a
    ``target_pull``, ``T21(f2)``'s point-wise term."""
    mapped_features, mapped_weights = map_rows(batch.transforms[BACKWARD], batch.features, batch.class_weights)
    return (alignment_loss(mapped_weights, batch.centers, batch.class_mask),
            boundary_loss(mapped_features, batch.labels, batch.centers, batch.boundaries, batch.margin,
                          batch.class_mask),
            pulled_regression(mapped_features, batch.old_features, batch.labels, batch.centers, batch.target_pull,
                              batch.pulled_classes))


def running_boundaries(previous: torch.Tensor, features: torch.Tensor, labels: torch.Tensor,
                       class_weights: torch.Tensor, quantile: float, momentum: float) -> torch.Tensor:
    """The new space's boundary angles ``b2_j`` after one batch, detached: per class of the batch,
    the ``quantile`` of ``angle(f2_i, norm(W2_j))`` over its samples, folded into ``previous`` by an
    exponential moving average (``b2 <- momentum b2 + (1 - momentum) q``; a class's first batch sets
    it: ``previous`` holds NaN for classes not met yet)."""
    with torch.no_grad():
        angles = angles_to(F.normalize(features.float(), dim=1), F.normalize(class_weights.float(), dim=1)[labels])
        updated = previous.clone()
        for j in labels.unique().tolist():
            batch_quantile = torch.quantile(angles[labels == j], quantile)
            before = previous[j]
            updated[j] = batch_quantile if torch.isnan(before) else momentum * before + (1 - momentum) * batch_quantile
        return updated


def _forward(batch: TrainingBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward alignment ``d(norm(W2_j), norm(T12(c_j)))`` and the new-space boundary on
    ``T12(f1_i)``: inside the cone of class ``y_i`` around ``norm(W2_y)`` (detached) with the
    running angle ``b2_y`` of the new features (detached), minus the new-space margin. T12 maps the batch's
    old features together with the centers, so that its batch norms see features, as at encode
    time (where it maps every old gallery feature)."""
    if batch.old_features is None or batch.new_boundaries is None:
        raise ValueError("the forward manner needs the old model's features of the batch (read by id from its "
                         "train-split embeddings) and the new space's running boundaries")
    mapped_features, mapped_centers = map_rows(batch.transforms[FORWARD], batch.old_features, batch.centers)
    align = alignment_loss(batch.class_weights, F.normalize(mapped_centers, dim=1), batch.class_mask)
    new_centers = F.normalize(batch.class_weights.detach(), dim=1)
    boundary = boundary_loss(mapped_features, batch.labels, new_centers, batch.new_boundaries, batch.forward_margin,
                             batch.class_mask)
    return align, boundary


def lce_backward_terms(batch: TrainingBatch) -> dict[str, torch.Tensor]:
    """Backward: ``d(norm(T21(W2_j)), c_j)``, boundary on ``T21(f2)`` (``_backward``)."""
    align, boundary, point_wise = _backward(batch)
    return {"align": align, "boundary": boundary, **point_wise}


def lce_forward_terms(batch: TrainingBatch) -> dict[str, torch.Tensor]:
    """Forward: ``d(norm(W2_j), norm(T12(c_j)))`` and the new-space boundary on ``T12(f1)`` (``_forward``)."""
    align, boundary = _forward(batch)
    return {"align": align, "boundary": boundary}


def lce_bidirectional_terms(batch: TrainingBatch) -> dict[str, torch.Tensor]:
    """Bidirectional: the means of the backward and the forward manners' alignments and boundaries
    (T21 and T12 each trained on its own terms), and T21's point-wise term with a ``target_pull``."""
    backward_align, backward_boundary, point_wise = _backward(batch)
    forward_align, forward_boundary = _forward(batch)
    return {"align": torch.stack([backward_align, forward_align]).mean(),
            "boundary": torch.stack([backward_boundary, forward_boundary]).mean(), **point_wise}


def influence_terms(batch: TrainingBatch) -> dict[str, torch.Tensor]:
    """BCT: the influence loss through model 1's frozen classifier."""
    return {"influence": influence_loss(batch.features, batch.labels, batch.old_head)}


def regression_terms(batch: TrainingBatch) -> dict[str, torch.Tensor]:
    """L2: ``||norm(f2) - norm(f1)||^2`` with ``f1`` the frozen old embedder's features of the batch."""
    if batch.images is None:
        raise ValueError("the L2 regression needs the batch's images for the old model's forward pass")
    with torch.no_grad():
        old_features = batch.old_embedder(batch.images)
    return {"regression": regression_loss(batch.features, old_features)}


def no_terms(batch: TrainingBatch) -> dict[str, torch.Tensor]:
    """Independent training: no compatibility term."""
    return {}


def retrieval_loss(queries: torch.Tensor, gallery: torch.Tensor, query_labels: torch.Tensor,
                   gallery_labels: torch.Tensor, own: torch.Tensor, scale: float) -> torch.Tensor:
    """Cross-model retrieval, NCA's objective (Goldberger et al., 2004) with a gallery of another
    model's features: ``-mean_i log sum_{j: y_j = y_i, j != own_i} p_ij`` with
    ``p_ij = softmax_j(s cos(q_i, g_j))`` over the gallery without the query's own image
    (``own[i]``: its position in the gallery, -1 when absent), as at scoring time, where a query
    never retrieves itself. It is the expected share of same-class neighbours of a soft nearest
    neighbour search: what top-1 and AP reward. A query with no other item of its class in the
    gallery adds nothing."""
    excluded = -1e4  # finite: a query with nothing to find keeps finite gradients (it is left out below)
    rows = torch.arange(len(queries), device=queries.device)
    logits = scale * F.normalize(queries, dim=1) @ F.normalize(gallery, dim=1).T
    same = query_labels[:, None] == gallery_labels[None, :]
    present = own >= 0
    logits[rows[present], own[present]] = excluded
    same[rows[present], own[present]] = False
    log_p = logits.log_softmax(dim=1)
    found = torch.logsumexp(log_p.masked_fill(~same, excluded), dim=1)
    keep = same.any(dim=1)
    return -(found[keep]).sum() / keep.sum().clamp(min=1)


@dataclass(frozen=True)
class RetrievalMemory:
    """Rows of a CMC fit that a retrieval term searches as the gallery: both models' features of
    the same images and their labels, and where each batch row sits among them (``own``, -1 when
    it is not there)."""

    old_features: torch.Tensor
    new_features: torch.Tensor
    labels: torch.Tensor
    own: torch.Tensor


def memory_rows(rows: int, batch: torch.Tensor, size: int, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to ``size`` random rows of ``rows`` together with the ``batch``'s own (sorted, each once),
    and each batch row's position among them."""
    drawn = torch.randperm(rows, generator=generator)[:size] if size < rows else torch.arange(rows)
    chosen = torch.unique(torch.cat([drawn, batch]))
    return chosen, torch.searchsorted(chosen, batch)


@dataclass(frozen=True)
class CmcBatch:
    """One batch of cross-model compatibility: both frozen models' features of the same images.

    ``old_space``/``new_space`` are the statistics of model 1's and model 2's spaces over the
    same images and label map (model 2's). Inputs of a transformation are unit vectors, as at
    encode time (``map_rows``)."""

    old_features: torch.Tensor
    new_features: torch.Tensor
    labels: torch.Tensor
    old_space: OldSpaceStats
    new_space: OldSpaceStats
    compat: CompatConfig
    transforms: nn.ModuleDict
    memory: RetrievalMemory | None = None  # the gallery rows a retrieval term searches (retrieval_cmc)


def _space(stats: OldSpaceStats, like: torch.Tensor, old_classes_only: bool
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    mask = stats.class_mask(old_classes_only)
    return (torch.as_tensor(stats.centers, device=like.device), torch.as_tensor(stats.boundaries, device=like.device),
            torch.as_tensor(mask, device=like.device))


def _lce_cmc(batch: CmcBatch) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """LCE's CMC terms (T21's point-wise term with a ``target_pull``), ``T12(f1)`` and the new
    space's centers, for ``lce_rbt_cmc``'s terms: each transformation maps its features once,
    beside the centers, so that its batch norms see one batch a step."""
    c1, b1, mask = _space(batch.old_space, batch.new_features, batch.compat.old_classes_only)
    c2, b2, _ = _space(batch.new_space, batch.new_features, False)
    mapped_f2, mapped_c2 = map_rows(batch.transforms[BACKWARD], batch.new_features, c2)
    mapped_f1, mapped_c1 = map_rows(batch.transforms[FORWARD], batch.old_features, c1)
    terms = {"align_21": alignment_loss(mapped_c2, c1, mask),
             "boundary_21": boundary_loss(mapped_f2, batch.labels, c1, b1, batch.compat.compactness_margin, mask),
             "align_12": alignment_loss(mapped_c1, c2, mask),
             "boundary_12": boundary_loss(mapped_f1, batch.labels, c2, b2, batch.compat.forward_margin, mask)}
    if batch.compat.target_pull is not None:  # the class mask built only for a fit that uses it
        pulled_classes = torch.as_tensor(pulled_class_mask(batch.old_space, batch.compat), device=c1.device)
        terms.update(pulled_regression(mapped_f2, batch.old_features, batch.labels, c1, batch.compat.target_pull,
                                       pulled_classes))
    return terms, mapped_f1, c2


def lce_cmc_terms(batch: CmcBatch) -> dict[str, torch.Tensor]:
    """LCE's CMC: in each target space, the mapped class centers aligned with that space's centers
    and the mapped features bounded by its boundaries."""
    return _lce_cmc(batch)[0]


def rbt_cmc_terms(batch: CmcBatch) -> dict[str, torch.Tensor]:
    """The RBT-style baseline: point-wise regression ``||T21(f2) - f1||^2 + ||T12(f1) - f2||^2``."""
    return {"regression": (regression_loss(map_rows(batch.transforms[BACKWARD], batch.new_features)[0],
                                           batch.old_features)
                           + regression_loss(map_rows(batch.transforms[FORWARD], batch.old_features)[0],
                                             batch.new_features))}


def lce_rbt_cmc_terms(batch: CmcBatch) -> dict[str, torch.Tensor]:
    """LCE's CMC terms, and for T12 beside them the point-wise regression ``||T12(f1) - f2||^2``
    and the mapped old features classified by the new space's centers
    (``center_classification``, scale ``compat.class_scale``). Bounding each mapped old feature
    to its class's cone loses which image lies near which, what new queries' nearest-neighbour
    top-1 needs; the regression keeps it, and the classification moves the mapped features that
    lie on another class's side (measured: README, 'Cross-model compatibility')."""
    terms, mapped_f1, new_centers = _lce_cmc(batch)
    regression = regression_loss(mapped_f1, batch.new_features)
    return {**terms, "regression": terms.get("regression", 0) + regression,
            "influence_12": center_classification(mapped_f1, batch.labels, new_centers, batch.compat.class_scale)}


def retrieval_cmc_terms(batch: CmcBatch) -> dict[str, torch.Tensor]:
    """Each transformation trained to retrieve (``retrieval_loss``) across the two frozen models:

    - ``retrieval_21``: the batch's new features mapped by T21 as queries against the memory's old
      features (the old gallery, fixed), and ``regression_21 = ||T21(f2) - f1||^2``;
    - ``retrieval_12``: the batch's new features (fixed) as queries against the memory's old
      features mapped by T12 (the mapped gallery, which moves: an old item whose class its old
      feature does not tell is moved away from every class's queries rather than into a wrong
      one), and ``regression_12 = ||T12(f1) - f2||^2`` on the batch's rows among them.

    Scales and regression weights are ``compat.retrieval``'s, per transformation."""
    memory, config = batch.memory, batch.compat.retrieval
    if memory is None:
        raise ValueError("retrieval_cmc needs the fit's rows as its gallery (a RetrievalMemory)")
    [mapped_new] = map_rows(batch.transforms[BACKWARD], batch.new_features)
    [mapped_gallery] = map_rows(batch.transforms[FORWARD], memory.old_features)
    mapped_old = mapped_gallery[memory.own]  # the batch's rows, mapped with the gallery (one batch norm)
    return {"retrieval_21": retrieval_loss(mapped_new, memory.old_features, batch.labels, memory.labels, memory.own,
                                           config.backward.scale),
            "regression_21": regression_loss(mapped_new, batch.old_features),
            "retrieval_12": retrieval_loss(batch.new_features, mapped_gallery, batch.labels, memory.labels,
                                           memory.own, config.forward.scale),
            "regression_12": regression_loss(mapped_old, batch.new_features)}
