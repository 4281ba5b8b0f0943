import math

import numpy as np
import pytest
import torch

from pipeline.compat.losses import (
    DimensionMismatch,
    alignment_loss,
    angles_to,
    boundary_loss,
    check_same_dim,
    influence_loss,
    influence_weights,
    regression_loss,
    warn_margin,
)
from pipeline.compat.objectives import TrainingObjective
from pipeline.compat.statistics import OldSpaceStats, StatisticsMismatch
from pipeline.config import CompatConfig, HeadConfig
from pipeline.model.heads import build_head


def _stats(classes=("a", "b"), old_classes=("a",)):
    return OldSpaceStats(classes=list(classes), old_classes=list(old_classes),
                         centers=np.array([[1.0, 0.0], [0.0, 1.0]], np.float32),
                         boundaries=np.array([0.5, 0.5], np.float32),
                         feature_means=np.array([[2.0, 0.0], [0.0, 3.0]], np.float32),
                         counts=np.array([5, 5]), boundary_rule="quantile")


def test_alignment_is_mean_squared_distance_of_unit_vectors():
    weights = torch.tensor([[3.0, 4.0], [0.0, 2.0]])  # unit rows (0.6, 0.8) and (0, 1)
    centers = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert alignment_loss(weights, centers, torch.tensor([True, True])).item() == pytest.approx((0.16 + 0.64) / 2)
    assert alignment_loss(weights, centers, torch.tensor([True, False])).item() == pytest.approx(0.8)


def test_boundary_is_angular_hinge_with_compactness_margin():
    features = torch.tensor([[2.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    centers = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    boundaries = torch.tensor([0.5, 0.5])
    # angles 0, pi/4, 0 against boundary 0.5 - 0.1: hinges 0, pi/4 - 0.4, 0
    value = boundary_loss(features, labels, centers, boundaries, 0.1, torch.tensor([True, True]))
    assert value.item() == pytest.approx((math.pi / 4 - 0.4) / 3, abs=1e-5)
    only_b = boundary_loss(features, labels, centers, boundaries, 0.1, torch.tensor([False, True]))
    assert only_b.item() == pytest.approx(0.0, abs=1e-6)
    # features are normalised: scaling them changes nothing
    assert boundary_loss(features * 7, labels, centers, boundaries, 0.1, torch.tensor([True, True])).item() == \
        pytest.approx(value.item(), abs=1e-5)


def test_influence_weights_use_old_rows_and_pseudo_rows():
    old_weight = torch.tensor([[9.0, 1.0]], requires_grad=True)  # the old model knows class "a" only
    rows = influence_weights(_stats(), old_weight, ["a"])
    assert torch.equal(rows, torch.tensor([[9.0, 1.0], [0.0, 3.0]]))
    assert not rows.requires_grad


def test_influence_weights_follow_model_twos_label_order_whatever_the_old_order():
    # Model 1 knew c, then a; model 2 orders a, b, c.
    stats = OldSpaceStats(classes=["a", "b", "c"], old_classes=["c", "a"], centers=np.eye(3, 2, dtype=np.float32),
                          boundaries=np.full(3, 0.5, np.float32),
                          feature_means=np.array([[9.0, 9.0], [7.0, 8.0], [9.0, 9.0]], np.float32),
                          counts=np.array([5, 5, 5]), boundary_rule="quantile")
    old_weight = torch.tensor([[0.0, 3.0], [1.0, 2.0]])  # rows: c, a
    rows = influence_weights(stats, old_weight, ["c", "a"])
    assert torch.equal(rows, torch.tensor([[1.0, 2.0], [7.0, 8.0], [0.0, 3.0]]))  # a's row, b's pseudo row, c's row


def test_influence_loss_is_cross_entropy_through_old_classifier():
    head = build_head(HeadConfig(kind="softmax"), 2, 2)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    value = influence_loss(torch.tensor([[2.0, 0.0]]), torch.tensor([1]), head)
    assert value.item() == pytest.approx(-math.log(math.exp(0) / (math.exp(2) + math.exp(0))))


@pytest.mark.parametrize("method", ["independent", "bct", "lce_direct"])
def test_objective_trains_only_model_two(method):
    stats = _stats()
    old_weight = torch.tensor([[1.0, 0.5]], requires_grad=True)
    old_head = build_head(HeadConfig(kind="cosface"), 2, 2)
    with torch.no_grad():
        old_head.weight.copy_(influence_weights(stats, old_weight, ["a"]))
    objective = TrainingObjective(method, CompatConfig(), stats if method != "independent" else None,
                                  old_head if method == "bct" else None)
    new_head = build_head(HeadConfig(kind="cosface"), 2, 2)
    features = torch.randn(4, 2, requires_grad=True)
    labels = torch.tensor([0, 1, 0, 1])
    terms = objective(features, new_head(features, labels), labels, new_head.weight)
    terms["loss"].backward()
    assert features.grad is not None and new_head.weight.grad is not None
    assert old_weight.grad is None
    assert all(p.grad is None for p in old_head.parameters())
    # Each term from its own function, on what the method should feed it; the rest are zero.
    with torch.no_grad():
        centers, boundaries = torch.as_tensor(stats.centers), torch.as_tensor(stats.boundaries)
        mask = torch.tensor([True, True])  # CompatConfig(): every class, margin 0
        expected = {"cls": torch.nn.functional.cross_entropy(new_head(features, labels), labels),
                    "align": alignment_loss(new_head.weight, centers, mask) if method == "lce_direct" else 0.0,
                    "boundary": boundary_loss(features, labels, centers, boundaries, 0.0, mask)
                    if method == "lce_direct" else 0.0,
                    "influence": influence_loss(features, labels, old_head) if method == "bct" else 0.0}
    for name, value in expected.items():
        assert terms[name].item() == pytest.approx(float(value), abs=1e-6), name
    assert terms["loss"].item() == pytest.approx(sum(float(v) for v in expected.values()), abs=1e-5)


def test_lambdas_scale_terms():
    stats = _stats()
    features, labels = torch.tensor([[1.0, 1.0]]), torch.tensor([0])
    weight = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    logits = torch.zeros(1, 2)
    base = TrainingObjective("lce_direct", CompatConfig(), stats)(features, logits, labels, weight)
    heavy = TrainingObjective("lce_direct", CompatConfig(lambda_align=3, lambda_boundary=0), stats)(
        features, logits, labels, weight)
    assert heavy["loss"].item() == pytest.approx(base["cls"].item() + 3 * base["align"].item())


def test_old_classes_only_masks_new_classes():
    objective = TrainingObjective("lce_direct", CompatConfig(old_classes_only=True), _stats())
    assert objective.class_mask.tolist() == [True, False]


def test_methods_refuse_missing_inputs():
    with pytest.raises(ValueError, match="statistics"):
        TrainingObjective("lce_direct", CompatConfig())
    with pytest.raises(ValueError, match="old classifier"):
        TrainingObjective("bct", CompatConfig(), _stats())


def test_dimension_mismatch_names_both_dimensions():
    with pytest.raises(DimensionMismatch, match="new feature dimension 128 differs from old dimension 64"):
        check_same_dim(128, 64, "model lce")


def test_statistics_with_other_classes_are_refused():
    with pytest.raises(StatisticsMismatch, match=r"missing \['c'\], not in the label map \['b'\]"):
        _stats().check_label_map(["a", "c"], "stats.npz")
    with pytest.raises(StatisticsMismatch, match="another order"):
        _stats().check_label_map(["b", "a"])


class _Rotate(torch.nn.Module):
    """A fixed 90-degree rotation standing in for a learned transformation: (x, y) -> (-y, x)."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))  # so that gradients have somewhere to go

    def forward(self, x):
        return self.scale * torch.stack([-x[:, 1], x[:, 0]], dim=1)


def _manner_terms(method):
    objective = TrainingObjective(method, CompatConfig(), _stats())
    transforms = torch.nn.ModuleDict({"backward_transform": _Rotate(), "forward_transform": _Rotate()})
    weights = torch.tensor([[0.0, 1.0], [1.0, 0.0]], requires_grad=True)
    features = torch.tensor([[1.0, 1.0]], requires_grad=True)
    terms = objective(features, torch.zeros(1, 2), torch.tensor([0]), weights, transforms)
    return terms, transforms, weights


def test_backward_maps_weights_and_features_into_the_old_space():
    terms, transforms, weights = _manner_terms("lce_backward")
    # T21(W) = [[-1, 0], [0, 1]] against centers e1, e2: squared distances 4 and 0
    assert terms["align"].item() == pytest.approx(2.0)
    # T21(f) = (-1, 1) is 3 pi / 4 away from c_0 = (1, 0); boundary 0.5, margin 0
    assert terms["boundary"].item() == pytest.approx(3 * math.pi / 4 - 0.5, abs=1e-5)
    terms["loss"].backward()
    assert transforms["backward_transform"].scale.grad is not None and weights.grad is not None
    assert transforms["forward_transform"].scale.grad is None


def test_forward_maps_old_centers_into_the_new_space():
    terms, transforms, _ = _manner_terms("lce_forward")
    # T12(c) = [[0, 1], [-1, 0]] against W = [[0, 1], [1, 0]]: squared distances 0 and 4
    assert terms["align"].item() == pytest.approx(2.0)
    # f = (1, 1) is pi / 4 away from T12(c_0) = (0, 1)
    assert terms["boundary"].item() == pytest.approx(math.pi / 4 - 0.5, abs=1e-5)
    terms["loss"].backward()
    assert transforms["forward_transform"].scale.grad is not None and transforms["backward_transform"].scale.grad is None


def test_bidirectional_averages_alignments_and_keeps_backward_boundary():
    terms, transforms, _ = _manner_terms("lce_bidirectional")
    assert terms["align"].item() == pytest.approx((2.0 + 2.0) / 2)
    assert terms["boundary"].item() == pytest.approx(3 * math.pi / 4 - 0.5, abs=1e-5)
    terms["loss"].backward()
    assert transforms["forward_transform"].scale.grad is not None and transforms["backward_transform"].scale.grad is not None


def test_manners_refuse_missing_transformations():
    objective = TrainingObjective("lce_backward", CompatConfig(), _stats())
    with pytest.raises(ValueError, match=r"needs the \['backward_transform'\] transformation"):
        objective(torch.ones(1, 2), torch.zeros(1, 2), torch.tensor([0]), torch.ones(2, 2))


def test_old_classes_only_with_no_shared_class_is_refused():
    with pytest.raises(ValueError, match="no class has compatibility terms"):
        TrainingObjective("lce_direct", CompatConfig(old_classes_only=True), _stats(old_classes=("z",)))


def test_regression_is_mean_squared_distance_of_unit_vectors():
    mapped = torch.tensor([[3.0, 4.0], [0.0, 5.0]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    # unit rows (0.6, 0.8) vs (1, 0): 0.16 + 0.64; (0, 1) vs (0, 1): 0
    assert regression_loss(mapped, targets).item() == pytest.approx(0.8 / 2)


def test_l2_regresses_onto_the_frozen_old_embedder_which_never_trains():
    old_embedder = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2), torch.nn.BatchNorm1d(2))
    objective = TrainingObjective("l2", CompatConfig(lambda_regression=2.0), _stats(), old_embedder=old_embedder)
    objective.train()  # a caller switching the objective to train mode leaves the old model in eval mode
    assert not old_embedder.training
    images = torch.randn(3, 1, 2, 2)
    features = torch.randn(3, 2, requires_grad=True)
    labels = torch.tensor([0, 1, 0])
    terms = objective(features, torch.zeros(3, 2), labels, torch.eye(2), images=images)
    assert terms["regression"].item() == pytest.approx(regression_loss(features, old_embedder(images)).item())
    assert terms["loss"].item() == pytest.approx(terms["cls"].item() + 2.0 * terms["regression"].item())
    terms["loss"].backward()
    assert features.grad is not None
    assert all(p.grad is None and not p.requires_grad for p in old_embedder.parameters())
    assert terms["align"].item() == terms["boundary"].item() == terms["influence"].item() == 0


def test_l2_refuses_a_missing_old_model_or_images():
    with pytest.raises(ValueError, match="old model's embedder"):
        TrainingObjective("l2", CompatConfig(), _stats())
    objective = TrainingObjective("l2", CompatConfig(), _stats(), old_embedder=torch.nn.Flatten())
    with pytest.raises(ValueError, match="needs the batch's images"):
        objective(torch.randn(2, 2), torch.zeros(2, 2), torch.tensor([0, 1]), torch.eye(2))


def test_angles_are_exact_with_a_gradient_near_zero_and_pi():
    center = torch.tensor([[1.0, 0.0, 0.0]])
    for angle in (1e-4, 0.3, math.pi - 1e-4):
        unit = torch.tensor([[math.cos(angle), math.sin(angle), 0.0]], dtype=torch.float32, requires_grad=True)
        measured = angles_to(unit, center)
        assert measured.item() == pytest.approx(angle, abs=1e-6)
        measured.sum().backward()
        # d angle / d u along the tangent (-sin, cos) is 1; a clamped acos gives 0 within 1.4e-3 rad of 0 and pi
        tangent = torch.tensor([-math.sin(angle), math.cos(angle), 0.0])
        assert torch.isfinite(unit.grad).all() and (unit.grad[0] @ tangent).item() == pytest.approx(1.0, abs=1e-3)


def test_boundary_loss_pulls_a_feature_just_outside_a_tight_boundary():
    feature = torch.tensor([[math.cos(2e-4), math.sin(2e-4)]], requires_grad=True)
    centers, boundaries = torch.tensor([[1.0, 0.0]]), torch.tensor([1e-4])
    loss = boundary_loss(feature, torch.tensor([0]), centers, boundaries, 0.0, torch.tensor([True]))
    assert loss.item() == pytest.approx(1e-4, abs=2e-6)  # the acos of a cosine clamped at 1 - 1e-6 said 1.4e-3
    loss.backward()
    assert torch.isfinite(feature.grad).all() and feature.grad.abs().sum() > 0.5


def test_a_margin_at_or_past_a_class_boundary_is_named_and_its_bound_clamped_at_the_center(caplog):
    stats = _stats()  # boundaries 0.5 rad; only class "a" is old
    assert warn_margin(stats, 0.49, old_classes_only=True) == [] and not caplog.records
    assert warn_margin(stats, 0.5, old_classes_only=True) == ["a"]
    assert ("compactness_margin 0.5 rad reaches the old-space boundary of 1 class(es): 'a' (b = 0.5000 rad)"
            in caplog.text)
    assert warn_margin(stats, 0.6, old_classes_only=False) == ["a", "b"]
    caplog.clear()
    TrainingObjective("lce_direct", CompatConfig(compactness_margin=0.6), stats)
    assert "'a' (b = 0.5000 rad), 'b' (b = 0.5000 rad)" in caplog.text
    caplog.clear()
    TrainingObjective("lce_direct", CompatConfig(compactness_margin=0.6, lambda_boundary=0.0), stats)  # no bound term
    TrainingObjective("bct", CompatConfig(compactness_margin=0.6), stats, old_head=build_head(HeadConfig(), 2, 2))
    assert not caplog.records
    # The bound is 0: a feature at angle 0.3 from its center pays 0.3, and not 0.3 + (m - b).
    feature = torch.tensor([[math.cos(0.3), math.sin(0.3)]], requires_grad=True)
    loss = boundary_loss(feature, torch.tensor([0]), torch.tensor([[1.0, 0.0]]), torch.tensor([0.5]), 0.6,
                         torch.tensor([True]))
    assert loss.item() == pytest.approx(0.3, abs=1e-6)
