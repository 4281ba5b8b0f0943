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
    running_boundaries,
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


def _rotation():
    """A linear map that starts as the 90-degree rotation (x, y) -> (-y, x), standing in for a
    learned transformation (its weight receives the gradients)."""
    layer = torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.0, -1.0], [1.0, 0.0]]))
    return layer


# Model 2's classifier rows W = [(0, 1), (1, 0)]; a batch of two samples, labels 0 and 1, with new
# features f2 at pi / 4 and 0 from their class's W row, and old features f1 = (1, 0) and (1, 1).
WEIGHTS = [[0.0, 1.0], [1.0, 0.0]]
NEW_FEATURES, OLD_FEATURES, LABELS = [[1.0, 1.0], [1.0, 0.0]], [[1.0, 0.0], [1.0, 1.0]], [0, 1]


def _manner_terms(method, compat=CompatConfig()):
    objective = TrainingObjective(method, compat, _stats())
    transforms = torch.nn.ModuleDict({"backward_transform": _rotation(), "forward_transform": _rotation()})
    weights = torch.tensor(WEIGHTS, requires_grad=True)
    features = torch.tensor(NEW_FEATURES, requires_grad=True)
    terms = objective(features, torch.zeros(2, 2), torch.tensor(LABELS), weights, transforms,
                      old_features=torch.tensor(OLD_FEATURES))
    terms["loss"].backward()
    return terms, transforms, weights, features, objective


def _grad(parameter):
    return 0.0 if parameter.grad is None else parameter.grad.abs().sum().item()


# Backward: T21(W) = [(-1, 0), (0, 1)] against c = [(1, 0), (0, 1)]: squared distances 4 and 0;
# T21(f2) = (-1, 1) is 3 pi / 4 from c_0 (bound 0.5), T21(f2_1) = (0, 1) is on c_1.
BACKWARD_ALIGN, BACKWARD_BOUNDARY = 2.0, (3 * math.pi / 4 - 0.5) / 2
# Forward: T12(c) = [(0, 1), (-1, 0)] against W: squared distances 0 and 4. The new space's
# running boundaries after this one batch are the new features' angles, [pi / 4, 0];
# T12(f1_0) = (0, 1) lies on norm(W_0), T12(f1_1) = (-1, 1) is 3 pi / 4 from norm(W_1) (bound 0).
FORWARD_ALIGN, FORWARD_BOUNDARY = 2.0, (0.0 + 3 * math.pi / 4) / 2


def test_backward_maps_weights_and_features_into_the_old_space():
    terms, transforms, weights, features, _ = _manner_terms("lce_backward")
    assert terms["align"].item() == pytest.approx(BACKWARD_ALIGN)
    assert terms["boundary"].item() == pytest.approx(BACKWARD_BOUNDARY, abs=1e-5)
    # (each W row sits where its alignment's gradient vanishes, at a center or its antipode)
    assert _grad(transforms["backward_transform"].weight) > 0 and weights.grad is not None and _grad(features) > 0
    assert transforms["forward_transform"].weight.grad is None


def test_forward_maps_old_features_with_the_centers_into_the_new_cones():
    terms, transforms, weights, features, objective = _manner_terms("lce_forward")
    assert objective.new_boundaries.tolist() == pytest.approx([math.pi / 4, 0.0], abs=1e-6)
    assert terms["align"].item() == pytest.approx(FORWARD_ALIGN)
    assert terms["boundary"].item() == pytest.approx(FORWARD_BOUNDARY, abs=1e-5)
    # T12 and model 2's classifier (through the alignment) train; f2 only sets the detached
    # running boundaries, and T21 is not this manner's.
    assert _grad(transforms["forward_transform"].weight) > 0 and weights.grad is not None
    assert features.grad is None and transforms["backward_transform"].weight.grad is None


def test_forward_boundary_trains_t12_alone_around_detached_classifier_rows():
    objective = TrainingObjective("lce_forward", CompatConfig(), _stats())
    forward = _rotation()
    weights, features = torch.tensor(WEIGHTS, requires_grad=True), torch.tensor(NEW_FEATURES, requires_grad=True)
    terms = objective(features, torch.zeros(2, 2), torch.tensor(LABELS), weights,
                      torch.nn.ModuleDict({"forward_transform": forward}), old_features=torch.tensor(OLD_FEATURES))
    to_t12, to_weights, to_features = torch.autograd.grad(terms["boundary"], [forward.weight, weights, features],
                                                          allow_unused=True)
    assert to_t12.abs().sum() > 0 and to_weights is None and to_features is None


def test_forward_maps_features_and_centers_in_one_batch():
    """T12's batch norms see the old features, as at encode time, not a batch of C centers."""
    shapes = []
    forward = _rotation()
    forward.register_forward_hook(lambda module, inputs, output: shapes.append(tuple(inputs[0].shape)))
    objective = TrainingObjective("lce_forward", CompatConfig(), _stats())
    objective(torch.randn(5, 2), torch.zeros(5, 2), torch.tensor([0, 1, 0, 1, 0]), torch.eye(2),
              torch.nn.ModuleDict({"forward_transform": forward}), old_features=torch.randn(5, 2))
    assert shapes == [(5 + 2, 2)]


def test_forward_refuses_a_batch_without_old_features():
    objective = TrainingObjective("lce_forward", CompatConfig(), _stats())
    with pytest.raises(ValueError, match="needs the old model's features of the batch"):
        objective(torch.ones(2, 2), torch.zeros(2, 2), torch.tensor([0, 1]), torch.eye(2),
                  torch.nn.ModuleDict({"forward_transform": _rotation()}))


def test_a_new_space_margin_reaching_the_first_running_boundaries_is_named(caplog):
    objective = TrainingObjective("lce_forward", CompatConfig(compactness_margin=0.6, new_space_margin=0.5), _stats())
    assert not caplog.records  # the old space's boundaries (0.5) are not the forward manner's
    objective(torch.tensor(NEW_FEATURES), torch.zeros(2, 2), torch.tensor(LABELS), torch.tensor(WEIGHTS),
              torch.nn.ModuleDict({"forward_transform": _rotation()}), old_features=torch.tensor(OLD_FEATURES))
    # running angles pi / 4 (0.785 > 0.5) and 0: only class 'b' is reached
    assert "reaches the first batch's new-space boundary of 1 class(es): 'b'" in caplog.text


def test_running_boundaries_take_a_quantile_per_class_and_a_moving_average():
    angles = torch.tensor([0.1, 0.2, 0.3, 1.0])
    features = torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)  # angles to the row (1, 0)
    labels, weights = torch.tensor([0, 0, 0, 1]), torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    first = running_boundaries(torch.full((3,), float("nan")), features, labels, weights, 0.5, 0.75)
    assert first[:2].tolist() == pytest.approx([0.2, 1.0], abs=1e-6) and math.isnan(first[2].item())
    second = running_boundaries(first, features[:1], labels[:1], weights, 0.5, 0.75)
    assert second[:2].tolist() == pytest.approx([0.75 * 0.2 + 0.25 * 0.1, 1.0], abs=1e-6)
    assert not second.requires_grad


def test_objective_in_eval_mode_keeps_the_running_boundaries():
    objective = TrainingObjective("lce_forward", CompatConfig(), _stats())
    transforms = torch.nn.ModuleDict({"forward_transform": _rotation()})
    call = lambda features: objective(features, torch.zeros(2, 2), torch.tensor(LABELS),  # noqa: E731
                                      torch.tensor(WEIGHTS), transforms, old_features=torch.tensor(OLD_FEATURES))
    call(torch.tensor(NEW_FEATURES))
    kept = objective.new_boundaries.clone()
    objective.eval()
    call(torch.tensor([[0.0, 1.0], [0.0, 1.0]]))
    assert torch.equal(objective.new_boundaries, kept)


def test_bidirectional_averages_the_two_manners_terms():
    terms, transforms, weights, features, _ = _manner_terms("lce_bidirectional")
    assert terms["align"].item() == pytest.approx((BACKWARD_ALIGN + FORWARD_ALIGN) / 2)
    assert terms["boundary"].item() == pytest.approx((BACKWARD_BOUNDARY + FORWARD_BOUNDARY) / 2, abs=1e-5)
    assert _grad(transforms["forward_transform"].weight) > 0 and _grad(transforms["backward_transform"].weight) > 0


# LCE's point-wise term with a pull of 1/2 (centers c = [(1, 0), (0, 1)], old features f1 at 0 and
# pi / 4): targets at 0 (f1_0 is on c_0) and 3 pi / 8 (halfway between pi / 4 and pi / 2).
# Direct: f2 at pi / 4 and 0, so 2 - 2 cos(pi / 4) and 2 - 2 cos(3 pi / 8); backward: T21(f2) at
# 3 pi / 4 and pi / 2, so 2 - 2 cos(3 pi / 4) and 2 - 2 cos(pi / 8).
PULLED_DIRECT = (2 - 2 * math.cos(math.pi / 4) + 2 - 2 * math.cos(3 * math.pi / 8)) / 2
PULLED_BACKWARD = (2 - 2 * math.cos(3 * math.pi / 4) + 2 - 2 * math.cos(math.pi / 8)) / 2


@pytest.mark.parametrize(("method", "expected"), [("lce_direct", PULLED_DIRECT), ("lce_backward", PULLED_BACKWARD),
                                                  ("lce_bidirectional", PULLED_BACKWARD), ("lce_forward", 0.0)])
def test_a_target_pull_regresses_the_old_space_features_onto_pulled_old_features(method, expected):
    compat = CompatConfig(target_pull=0.5, lambda_regression=2.0)
    terms, *_ = _manner_terms(method, compat)
    assert terms["regression"].item() == pytest.approx(expected, abs=1e-5)
    without, *_ = _manner_terms(method, CompatConfig(lambda_regression=2.0))
    assert without["regression"].item() == 0
    assert terms["loss"].item() == pytest.approx(without["loss"].item() + 2.0 * expected, abs=1e-5)


@pytest.mark.parametrize(("method", "trained"), [("lce_direct", ()), ("lce_backward", ("backward_transform",)),
                                                 ("lce_bidirectional", ("backward_transform",))])
def test_the_point_wise_term_reaches_model_two_and_t21_only(method, trained):
    objective = TrainingObjective(method, CompatConfig(target_pull=0.3), _stats())
    transforms = torch.nn.ModuleDict({"backward_transform": _rotation(), "forward_transform": _rotation()})
    weights, features = torch.tensor(WEIGHTS, requires_grad=True), torch.tensor(NEW_FEATURES, requires_grad=True)
    terms = objective(features, torch.zeros(2, 2), torch.tensor(LABELS), weights, transforms,
                      old_features=torch.tensor(OLD_FEATURES))
    terms["regression"].backward()
    assert _grad(features) > 0 and _grad(weights) == 0  # the classifier rows are no part of it
    for name, transform in transforms.items():
        assert (_grad(transform.weight) > 0) == (name in trained), name


def test_the_point_wise_term_can_cover_only_the_classes_the_old_model_never_learned():
    # _stats(): the old model knows class a only, so only the sample of class b (its target at 3 pi / 8) is pulled
    terms, *_ = _manner_terms("lce_direct", CompatConfig(target_pull=0.5, pull_classes="unseen"))
    assert terms["regression"].item() == pytest.approx(2 - 2 * math.cos(3 * math.pi / 8), abs=1e-5)


def test_a_target_pull_without_old_features_is_refused():
    objective = TrainingObjective("lce_direct", CompatConfig(target_pull=0.3), _stats())
    with pytest.raises(ValueError, match="needs the old model's features of the batch"):
        objective(torch.ones(2, 2), torch.zeros(2, 2), torch.tensor([0, 1]), torch.eye(2))
    TrainingObjective("lce_direct", CompatConfig(), _stats())(torch.ones(2, 2), torch.zeros(2, 2), torch.tensor([0, 1]),
                                                              torch.eye(2))  # no pull: no old features needed


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
