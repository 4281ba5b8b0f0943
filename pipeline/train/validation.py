"""Validation metrics of a model in training and the sweep objective built from them.

Computed on the validation rows of the training split (``pipeline.data.dataset.in_validation``), never
on the test split that the final matrix scores. The compatible route follows the method: the
new features as they are (direct), mapped by ``T21`` into the old space (backward,
bidirectional), or searched against the old gallery mapped by ``T12`` (forward).

The objective rewards compatibility and retained accuracy together, as the harmonic mean of

- ``gain``: the update gain on top-1, ``(M(new, old) - M(old, old)) / (M(ind, ind) - M(old, old))``
  with ``ind`` the independently trained new model (docs/design.md, 'The metrics'), its numerator taken
  at the lower end of its 95 % paired bootstrap interval over the validation queries, and
- ``retention``: ``M(new, new) / M(ind, ind)``,

When the gain is not positive the objective is the gain itself (at most 0): an incompatible
model scores below every compatible one, and ASHA can still rank incompatible trials against
each other (a flat 0 would tie them all in the early epochs, where most trials are still below
old/old).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.compat.methods import Method, Route
from pipeline.config import Preprocessing
from pipeline.data.decode import load_split
from pipeline.data.embeddings import positions
from pipeline.model.transformations import BACKWARD, FORWARD
from pipeline.score import beats, paired_interval, per_query_metrics, update_gain


@dataclass(frozen=True)
class References:
    """Top-1 on the validation rows of the two fixed models: old/old and independent new/new."""

    old_old: float
    independent: float

    def check_upgrade(self) -> None:
        """Refuse references with nothing to gain: the independent model must beat the old one."""
        if not beats(self.independent, self.old_old):
            raise ValueError(f"the independent model (top-1 {self.independent:.4f}) is no better than the old "
                             f"one ({self.old_old:.4f}) on the validation rows: no upgrade to measure a gain by")


def compat_objective(gain: float, retention: float) -> float:
    """Harmonic mean of the update gain and the retention when both are positive; else the gain
    when it is not positive, and 0 for a positive gain with no retention."""
    if gain <= 0:
        return gain
    if retention <= 0:
        return 0.0
    return 2 * gain * retention / (gain + retention)


def top1_hits(query: np.ndarray, gallery: np.ndarray, labels: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Per query, whether its nearest neighbour has its label, with the validation rows as both
    query and gallery set, each query excluding itself (the metric of ``pipeline.score.retrieval``,
    without its full-ranking AP, which a sweep does not use)."""
    return per_query_metrics(query, labels, gallery, labels, ids, ids, topk=(1,), full_ranking=False)["top1"]


def top1(query: np.ndarray, gallery: np.ndarray, labels: np.ndarray, ids: np.ndarray) -> float:
    """Top-1 over the validation rows (``top1_hits``)."""
    return float(top1_hits(query, gallery, labels, ids).mean())


@torch.inference_mode()
def compatible_pair(method: Method, new: torch.Tensor, old: torch.Tensor,
                    transforms: nn.ModuleDict) -> tuple[np.ndarray, np.ndarray]:
    """(queries, gallery) of the method's judged route (``Method.judged_route``):
    new features against old ones (both on the transformations' device), as CPU arrays."""
    if method.judged_route is Route.T21:
        new = transforms[BACKWARD](F.normalize(new, dim=1))
    elif method.judged_route is Route.T12:
        old = transforms[FORWARD](F.normalize(old, dim=1))
    return new.float().cpu().numpy(), old.float().cpu().numpy()


def validation_metrics(method: Method, new: torch.Tensor, old: torch.Tensor, labels: np.ndarray, ids: np.ndarray,
                       transforms: nn.ModuleDict, references: References,
                       old_old_hits: np.ndarray) -> dict[str, float]:
    """The epoch's validation numbers: new/new and new/old top-1, gain, retention, objective
    (``transforms`` in eval mode, as at encode time). The objective takes the gain at the lower
    end of the 95 % paired bootstrap interval of new/old minus old/old over the validation queries
    (``pipeline.score.uncertainty``): a margin over old/old that a few queries decide scores
    below one that holds, so that the sweep's winner is not chosen on noise."""
    queries, gallery = compatible_pair(method, new, old, transforms)
    new_new = top1(new.float().cpu().numpy(), new.float().cpu().numpy(), labels, ids)
    new_old_hits = top1_hits(queries, gallery, labels, ids)
    new_old = float(new_old_hits.mean())
    gain = update_gain(new_old, references.old_old, references.independent)
    low = paired_interval(new_old_hits, old_old_hits).low
    gain_low = update_gain(references.old_old + low, references.old_old, references.independent)
    retention = new_new / references.independent
    return {"val_new_new_top1": new_new, "val_new_old_top1": new_old, "val_gain": gain, "val_gain_low": gain_low,
            "val_retention": retention, "objective": compat_objective(gain_low, retention)}


@torch.inference_mode()
def embed_images(model: nn.Module, images: np.ndarray, batch: int = 1024) -> torch.Tensor:
    """``model.embedder`` over decoded images in batches, on the model's device, as float32."""
    device = next(model.parameters()).device
    return torch.cat([model.embedder(torch.from_numpy(images[i : i + batch]).to(device)).float()
                      for i in range(0, len(images), batch)])


@dataclass(frozen=True)
class ValidationInputs:
    """What a fit's validation after each epoch reads: the old model's features of the
    validation rows (an ``.npz`` with ``ids`` and ``vectors``) and the two references."""

    old_features: str
    references: References


class Validator:
    """Rank 0's validation after each epoch: the validation rows' images, the old model's features
    of the same rows (``old_features``: an ``.npz`` with ``ids`` and ``vectors``), references."""

    def __init__(self, dataset: str, labels_kept: list[int], method: Method, validation_fraction: float,
                 old_features: str, references: References, preprocessing: Preprocessing | None = None) -> None:
        """``preprocessing``: what the validated model reads (default: the dataset's images in [-1, 1])."""
        if validation_fraction <= 0:
            raise ValueError("validation needs validation_fraction > 0 (the rows held out of training)")
        ids, self.images, dataset_labels = load_split(dataset, "train", labels_kept,
                                                      validation_fraction=validation_fraction, validation=True,
                                                      preprocessing=preprocessing)
        with np.load(old_features, allow_pickle=False) as stored:
            self.old = torch.from_numpy(stored["vectors"][positions(stored["ids"], ids, old_features)])
        self.ids, self.labels = np.asarray(ids), np.asarray(dataset_labels)
        self.old_old_hits = top1_hits(self.old.numpy(), self.old.numpy(), self.labels, self.ids)
        self.method, self.references = method, references

    @torch.inference_mode()
    def __call__(self, model: nn.Module) -> dict[str, float]:
        was_training = model.training
        model.eval()
        try:  # eval mode throughout: the transformations' batch norms use (and keep) their running statistics
            new = embed_images(model, self.images)
            return validation_metrics(self.method, new, self.old.to(new.device), self.labels, self.ids,
                                      model.transforms, self.references, self.old_old_hits)
        finally:
            model.train(was_training)
