"""The forward manner's T12, trained on a synthetic pair of spaces and used as at encode time
(eval mode, mapping held-out old features): trained on the batch's old features it serves new
queries better than old/old does, and better than a T12 fit on the class centers alone."""

import torch
import torch.nn.functional as F

from pipeline.compat.losses import alignment_loss, boundary_loss
from pipeline.compat.objectives import TrainingObjective
from pipeline.compat.statistics import compute_old_space_stats
from pipeline.config import CompatConfig, TransformConfig
from pipeline.model.transformations import FORWARD, build_transforms

CLASSES, DIM = 6, 16


def _spaces(seed: int):
    """Class means in two unrelated spaces; the new one holds its classes tighter."""
    generator = torch.Generator().manual_seed(seed)
    old_means = F.normalize(torch.randn(CLASSES, DIM, generator=generator), dim=1)
    new_means = F.normalize(torch.randn(CLASSES, DIM, generator=generator), dim=1)

    def draw(n: int):
        labels = torch.randint(0, CLASSES, (n,), generator=generator)
        noise = lambda scale: scale * torch.randn(n, DIM, generator=generator) / DIM**0.5  # noqa: E731
        return old_means[labels] + noise(2.2), new_means[labels] + noise(1.4), labels

    return new_means, draw


def _top1(queries: torch.Tensor, gallery: torch.Tensor, labels: torch.Tensor) -> float:
    """Query i against the gallery of the same images, excluding image i."""
    similarity = F.normalize(queries, dim=1) @ F.normalize(gallery, dim=1).T
    similarity.fill_diagonal_(-2.0)
    return (labels[similarity.argmax(dim=1)] == labels).float().mean().item()


def _centers_only(objective: TrainingObjective, transforms: torch.nn.ModuleDict, classifier: torch.Tensor,
                  new: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The forward manner as first built (removed: it failed in every seed of the data, classes and
    dim scenarios): T12 sees the C centers only, ``f2`` is bounded around ``norm(T12(c_y))``."""
    mapped = F.normalize(transforms[FORWARD](objective.centers), dim=1)
    return (alignment_loss(classifier, mapped, objective.class_mask)
            + boundary_loss(new, labels, mapped, objective.boundaries, 0.1, objective.class_mask))


def _fit_t12(centers_only: bool, seed: int = 0) -> tuple[float, float]:
    """(old/old, new/T12(old)) top-1 on held-out images after 300 steps of the forward manner's
    terms (or the centers-only ones) with model 2's classifier fixed at the new class means."""
    torch.manual_seed(seed)
    classifier, draw = _spaces(seed)
    old, new, labels = draw(3000)
    names = [str(j) for j in range(CLASSES)]
    objective = TrainingObjective("lce_forward", CompatConfig(compactness_margin=0.1),
                                  compute_old_space_stats(old.numpy(), labels.numpy(), names, names))
    transforms = torch.nn.ModuleDict(build_transforms((FORWARD,), DIM, DIM, TransformConfig(hidden=64)))
    optimizer = torch.optim.Adam(transforms.parameters(), lr=3e-3)
    for _ in range(300):
        batch = torch.randint(0, len(labels), (64,))
        if centers_only:
            loss = _centers_only(objective, transforms, classifier, new[batch], labels[batch])
        else:
            terms = objective(new[batch], torch.zeros(64, CLASSES), labels[batch], classifier, transforms,
                              old_features=old[batch])
            loss = terms["align"] + terms["boundary"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    transforms.eval()
    test_old, test_new, test_labels = draw(1000)
    with torch.no_grad():
        mapped = transforms[FORWARD](F.normalize(test_old, dim=1))
    return _top1(test_old, test_old, test_labels), _top1(test_new, mapped, test_labels)


def test_t12_trained_on_features_serves_new_queries_against_the_mapped_old_gallery():
    old_old, feature_trained = _fit_t12(centers_only=False)
    _, center_trained = _fit_t12(centers_only=True)
    # Measured at this seed: old/old 0.543, T12 on features 0.714, T12 on the centers only 0.597.
    assert feature_trained > old_old + 0.1
    assert feature_trained > center_trained + 0.05
