"""Cross-model compatibility terms on tiny inputs: hand-computed values and where gradients go."""

import math

import numpy as np
import pytest
import torch

from pipeline.compat.losses import RetrievalMemory, memory_rows, pulled_targets, retrieval_loss
from pipeline.compat.objectives import cmc_terms
from pipeline.compat.statistics import OldSpaceStats
from pipeline.config import CompatConfig, ModelConfig, TransformConfig
from pipeline.model.artifacts import build_cmc_transforms, load_cmc, write_initial_model
from pipeline.model.card import ArtifactError, CmcCard, ModelRef, write_card
from pipeline.model.networks import EmbeddingModel
from pipeline.model.transformations import BACKWARD, FORWARD


class _Rotate(torch.nn.Module):
    """A fixed 90-degree rotation standing in for a learned transformation: (x, y) -> (-y, x)."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, x):
        return self.scale * torch.stack([-x[:, 1], x[:, 0]], dim=1)


def _space(centers):
    return OldSpaceStats(classes=["a", "b"], old_classes=["a", "b"], centers=np.array(centers, np.float32),
                         boundaries=np.array([0.5, 0.5], np.float32), feature_means=np.zeros((2, 2), np.float32),
                         counts=np.array([1, 1]), boundary_rule="quantile")


OLD_SPACE = _space([[1.0, 0.0], [0.0, 1.0]])
NEW_SPACE = _space([[0.0, -1.0], [1.0, 0.0]])  # the old centers rotated by -90 degrees: T21 maps them back exactly


def _terms(method, compat=CompatConfig(compactness_margin=0.1)):
    transforms = torch.nn.ModuleDict({"backward_transform": _Rotate(), "forward_transform": _Rotate()})
    old_features = torch.tensor([[1.0, 0.0]])   # class a, at its old center
    new_features = torch.tensor([[0.0, -2.0]])  # class a, at its new center (norm 2)
    return cmc_terms(method, old_features, new_features, torch.tensor([0]), OLD_SPACE, NEW_SPACE, compat,
                     transforms), transforms


def test_lce_cmc_aligns_and_bounds_in_each_target_space():
    terms, _ = _terms("lce_cmc")
    # T21 maps the new centers onto the old ones and the new feature onto the old center: no loss.
    assert terms["align_21"].item() == pytest.approx(0.0, abs=1e-6)
    assert terms["boundary_21"].item() == pytest.approx(0.0, abs=1e-6)
    # T12 rotates the old centers by +90 degrees, opposite to the new ones: |u - (-u)|^2 = 4 each,
    # and the old feature lands at angle pi from its new center (boundary 0.5, margin 0.1).
    assert terms["align_12"].item() == pytest.approx(4.0, abs=1e-5)
    assert terms["boundary_12"].item() == pytest.approx(math.pi - 0.4, abs=1e-2)
    assert terms["regression"].item() == 0
    assert terms["loss"].item() == pytest.approx(4.0 + terms["boundary_12"].item(), abs=1e-5)


def test_rbt_cmc_regresses_point_wise():
    terms, _ = _terms("rbt_cmc")
    # T21(new) = (1, 0) = old feature: 0; T12(old) = (0, 1) against the new feature (0, -1): 4.
    assert terms["regression"].item() == pytest.approx(4.0, abs=1e-6)
    assert terms["align_21"].item() == terms["align_12"].item() == terms["boundary_12"].item() == 0
    assert terms["loss"].item() == pytest.approx(4.0, abs=1e-6)


def test_lce_rbt_cmc_adds_t12s_regression_and_classification_to_lces_terms():
    lce, _ = _terms("lce_cmc")
    rbt, _ = _terms("rbt_cmc")
    terms, _ = _terms("lce_rbt_cmc", CompatConfig(compactness_margin=0.1, lambda_regression=0.5,
                                                  lambda_influence=0.25, class_scale=2.0))
    for name in ("align_21", "boundary_21", "align_12", "boundary_12"):
        assert terms[name].item() == pytest.approx(lce[name].item(), abs=1e-6)
    # T12's regression only: T12(old) = (0, 1) against the new feature (0, -1) gives 4 (rbt adds T21's 0)
    assert terms["regression"].item() == pytest.approx(4.0, abs=1e-6) == rbt["regression"].item()
    # T12(old) = (0, 1) has cosines -1 and 0 to the new centers (0, -1) and (1, 0): CE of logits
    # 2 x (-1, 0) for class a is log(1 + e^2)
    assert terms["influence_12"].item() == pytest.approx(math.log(1 + math.e ** 2), abs=1e-5)
    assert lce["influence_12"].item() == rbt["influence_12"].item() == 0
    assert terms["loss"].item() == pytest.approx(lce["loss"].item() + 0.5 * 4.0 + 0.25 * math.log(1 + math.e ** 2),
                                                 abs=1e-5)


def test_pulled_targets_move_each_feature_toward_its_class_center():
    features, centers = torch.tensor([[0.0, 2.0], [3.0, 0.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    pulled = pulled_targets(features, torch.tensor([0, 1]), centers, 0.5)
    half = 1 / math.sqrt(2)
    assert torch.allclose(pulled, torch.tensor([[half, half], [half, half]]), atol=1e-6)
    assert torch.allclose(pulled_targets(features, torch.tensor([0, 1]), centers, 0.0), torch.eye(2).flip(0))
    assert torch.allclose(pulled_targets(features, torch.tensor([0, 1]), centers, 1.0), centers)


@pytest.mark.parametrize(("pull", "t21_part"), [(None, 0.0), (0.0, 2.0), (0.5, 2 - math.sqrt(2)), (1.0, 0.0)])
def test_lce_rbt_cmc_regresses_t21_onto_pulled_old_features(pull, t21_part):
    transforms = torch.nn.ModuleDict({"backward_transform": _Rotate(), "forward_transform": _Rotate()})
    # class a (old center (1, 0)): T21(new) = (1, 0); the old feature (0, 1) pulled halfway is at 45 degrees.
    # T12(old) = (-1, 0) against the new feature's (0, -1): 2, whatever the pull.
    terms = cmc_terms("lce_rbt_cmc", torch.tensor([[0.0, 1.0]]), torch.tensor([[0.0, -2.0]]), torch.tensor([0]),
                      OLD_SPACE, NEW_SPACE, CompatConfig(compactness_margin=0.1, target_pull=pull), transforms)
    assert terms["regression"].item() == pytest.approx(2.0 + t21_part, abs=1e-5)


@pytest.mark.parametrize("method", ["lce_cmc", "lce_rbt_cmc"])
def test_each_transformation_maps_one_batch_a_step(method):
    """Its batch norms then see one set of statistics a step: the features beside the centers."""
    transforms = build_cmc_transforms(4, 6, TransformConfig(blocks=1, paths=1, hidden=8))
    calls = {name: [] for name in transforms}
    for name, transform in transforms.items():
        transform.register_forward_hook(lambda module, inputs, output, name=name: calls[name].append(len(inputs[0])))
    stats = {dim: OldSpaceStats(["a", "b"], ["a", "b"], np.eye(2, dim, dtype=np.float32), np.full(2, 0.3, np.float32),
                                np.zeros((2, dim), np.float32), np.array([2, 2]), "quantile") for dim in (4, 6)}
    cmc_terms(method, torch.randn(3, 4), torch.randn(3, 6), torch.tensor([0, 1, 0]), stats[4], stats[6],
              CompatConfig(target_pull=0.3), transforms)
    assert calls == {BACKWARD: [5], FORWARD: [5]}  # 3 features + 2 centers, once


def test_the_new_space_margin_bounds_t12s_targets_and_the_old_margin_t21s():
    terms, _ = _terms("lce_cmc", CompatConfig(compactness_margin=0.1, new_space_margin=0.3))
    assert terms["boundary_12"].item() == pytest.approx(math.pi - (0.5 - 0.3), abs=1e-2)
    assert terms["boundary_21"].item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize(("method", "pull"), [("lce_cmc", None), ("rbt_cmc", None), ("lce_rbt_cmc", None),
                                            ("lce_rbt_cmc", 0.3)])
def test_gradients_reach_exactly_the_two_transformations(method, pull):
    old_model = EmbeddingModel(ModelConfig(embedding_dim=4), 1, 2).eval()
    new_model = EmbeddingModel(ModelConfig(embedding_dim=6), 1, 2).eval()
    images = torch.randn(4, 1, 28, 28)
    with torch.no_grad():  # CMC works on the stored features of two frozen models
        old_features, new_features = old_model.embedder(images), new_model.embedder(images)
    stats = {dim: OldSpaceStats(["a", "b"], ["a", "b"], np.eye(2, dim, dtype=np.float32), np.full(2, 0.3, np.float32),
                                np.zeros((2, dim), np.float32), np.array([2, 2]), "quantile") for dim in (4, 6)}
    transforms = build_cmc_transforms(4, 6, TransformConfig(blocks=1, paths=1, hidden=8))
    terms = cmc_terms(method, old_features, new_features, torch.tensor([0, 1, 0, 1]), stats[4], stats[6],
                      CompatConfig(target_pull=pull), transforms)
    terms["loss"].backward(retain_graph=True)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in transforms.parameters())
    if method == "lce_cmc":  # each direction's terms train its own transformation and no other
        for suffix, trained, untouched in (("_21", BACKWARD, FORWARD), ("_12", FORWARD, BACKWARD)):
            transforms.zero_grad(set_to_none=True)
            sum(value for name, value in terms.items() if name.endswith(suffix)).backward(retain_graph=True)
            assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in transforms[trained].parameters())
            assert all(p.grad is None for p in transforms[untouched].parameters())
    if method == "lce_rbt_cmc":  # T12's regression and classification, and T21's regression only with a pull
        transforms.zero_grad(set_to_none=True)
        terms["influence_12"].backward(retain_graph=True)
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in transforms[FORWARD].parameters())
        assert all(p.grad is None for p in transforms[BACKWARD].parameters())
        transforms.zero_grad(set_to_none=True)
        terms["regression"].backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in transforms[FORWARD].parameters())
        reached = [p.grad is not None and p.grad.abs().sum() > 0 for p in transforms[BACKWARD].parameters()]
        assert all(reached) if pull is not None else not any(reached)


def test_identity_transformations_refuse_other_dimensions():
    with pytest.raises(ValueError, match="cannot map dimension 6 to dimension 4"):
        build_cmc_transforms(4, 6, TransformConfig(blocks=0))


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="unknown CMC method 'l3'"):
        _terms("l3")


def test_load_cmc_refuses_a_model_artifact_and_a_missing_file(tmp_path):
    write_initial_model(tmp_path / "model", "m", ModelConfig(embedding_dim=4), ["a", "b"])
    with pytest.raises(ArtifactError, match="not a CMC artifact \\(card kind 'model'\\)"):
        load_cmc(tmp_path / "model")
    folder = tmp_path / "cmc"
    refs = {name: ModelRef(name=name, id=f"{name}-1", dir=str(tmp_path / name), dim=dim) for name, dim in (("a", 4), ("b", 6))}
    write_card(folder, CmcCard(id="c-1", name="c", method="lce_cmc", transform=TransformConfig(hidden=8),
                               old_model=refs["a"], new_model=refs["b"], classes=["a", "b"], config={}))
    with pytest.raises(ArtifactError, match="transforms.pt: weights file not found"):
        load_cmc(folder)
    (folder / "transforms.pt").write_bytes(b"not torch")
    with pytest.raises(ArtifactError, match="transforms.pt: cannot read weights"):
        load_cmc(folder)


def test_the_retrieval_loss_is_nca_over_the_gallery_without_the_querys_own_image():
    rng = np.random.default_rng(0)
    queries, gallery = torch.tensor(rng.normal(size=(5, 3))), torch.tensor(rng.normal(size=(7, 3)))
    query_labels, gallery_labels = torch.tensor([0, 1, 0, 2, 1]), torch.tensor([0, 1, 1, 0, 2, 1, 0])
    own = torch.tensor([0, 2, -1, 4, -1])  # queries 0, 1 and 3 are gallery items 0, 2 and 4
    expected = []
    for i in range(5):  # by hand: a softmax over the other items, the share of same-class ones
        unit = lambda v: v / np.linalg.norm(v)  # noqa: E731
        others = [j for j in range(7) if j != own[i]]
        weights = {j: math.exp(4.0 * float(unit(queries[i].numpy()) @ unit(gallery[j].numpy()))) for j in others}
        hits = [j for j in others if gallery_labels[j] == query_labels[i]]
        if hits:
            expected.append(-math.log(sum(weights[j] for j in hits) / sum(weights.values())))
    found = retrieval_loss(queries, gallery, query_labels, gallery_labels, own, scale=4.0)
    assert found.item() == pytest.approx(np.mean(expected), rel=1e-6)
    assert len(expected) == 4  # query 3 (class 2) has no other item of its class: left out, not log(0)


def test_the_memory_holds_the_batch_and_says_where_each_row_is():
    chosen, own = memory_rows(100, torch.tensor([7, 93, 40]), 10, torch.Generator().manual_seed(0))
    assert len(chosen) <= 13 and chosen.tolist() == sorted(set(chosen.tolist()))
    assert chosen[own].tolist() == [7, 93, 40]
    everything, _ = memory_rows(20, torch.tensor([3]), 50)
    assert everything.tolist() == list(range(20))


def test_retrieval_cmc_moves_t21_queries_and_t12_gallery_items_and_keeps_the_regressions():
    torch.manual_seed(0)
    old, new, labels = torch.randn(40, 4), torch.randn(40, 6), torch.arange(40) % 3
    stats = {d: OldSpaceStats(classes=["a", "b", "c"], old_classes=["a", "b", "c"],
                              centers=np.eye(3, d, dtype=np.float32), boundaries=np.ones(3, np.float32),
                              feature_means=np.zeros((3, d), np.float32), counts=np.ones(3, int),
                              boundary_rule="quantile") for d in (4, 6)}
    transforms = build_cmc_transforms(4, 6, TransformConfig(hidden=8))
    batch = torch.tensor([0, 5, 9, 12])
    chosen, own = memory_rows(40, batch, 16, torch.Generator().manual_seed(1))
    memory = RetrievalMemory(old[chosen], new[chosen], labels[chosen], own)
    with pytest.raises(ValueError, match="needs the fit's rows as its gallery"):
        cmc_terms("retrieval_cmc", old[batch], new[batch], labels[batch], stats[4], stats[6], CompatConfig(),
                  transforms)
    compat = CompatConfig()
    terms = cmc_terms("retrieval_cmc", old[batch], new[batch], labels[batch], stats[4], stats[6], compat, transforms,
                      memory)
    assert all(terms[t].item() > 0 for t in ("retrieval_21", "regression_21", "retrieval_12", "regression_12"))
    assert terms["align_21"].item() == terms["regression"].item() == 0
    weights = compat.retrieval
    assert terms["loss"].item() == pytest.approx(
        terms["retrieval_21"].item() + terms["retrieval_12"].item()
        + weights.backward.lambda_regression * terms["regression_21"].item()
        + weights.forward.lambda_regression * terms["regression_12"].item(), rel=1e-6)
    terms["retrieval_21"].backward()  # T21's retrieval moves T21 alone (the old gallery is fixed)
    assert transforms[BACKWARD].blocks[0].paths[0][0].weight.grad.abs().sum() > 0
    assert transforms[FORWARD].blocks[0].paths[0][0].weight.grad is None
