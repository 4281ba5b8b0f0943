"""Training set-up that needs no cluster: budget, seeds, and the checks made before workers start."""

import numpy as np
import pytest
import torch

from pipeline.compat.losses import DimensionMismatch
from pipeline.compat.methods import method_of
from pipeline.compat.statistics import StatisticsMismatch, compute_old_space_stats
from pipeline.compat.steps import autocast, autocast_dtype, optimizer_step
from pipeline.config import ModelConfig, Preprocessing, TrainConfig
from pipeline.model.artifacts import write_artifact, write_initial_model
from pipeline.model.card import ModelCard
from pipeline.model.networks import EmbeddingModel
from pipeline.train.driver import storage_location
from pipeline.train.loop import passes_per_epoch
from pipeline.train.training import build_objective, check_old_features, init_seed

INPUT = Preprocessing.project("L", 28)  # the new model's input, which only L2's old forward pass reads


def test_small_datasets_pass_several_times_per_epoch():
    assert passes_per_epoch(TrainConfig(name="m", epochs=4, min_steps=900), batches_per_pass=468) == 1
    assert passes_per_epoch(TrainConfig(name="m", epochs=4, min_steps=900), batches_per_pass=12) == 19
    assert passes_per_epoch(TrainConfig(name="m", epochs=4), batches_per_pass=1) == 1


def test_models_never_share_initial_weights_by_name():
    assert init_seed(TrainConfig(name="old")) != init_seed(TrainConfig(name="independent"))
    assert init_seed(TrainConfig(name="old")) == init_seed(TrainConfig(name="old"))


@pytest.fixture()
def old_model(tmp_path):
    return write_initial_model(tmp_path / "old", "old", ModelConfig(embedding_dim=8), ["a"])


def _stats_file(tmp_path, classes, dim=8):
    rng = np.random.default_rng(0)
    stats = compute_old_space_stats(rng.normal(size=(20, dim)), np.arange(20) % len(classes), classes, ["a"])
    stats.save(tmp_path / "stats.npz")
    return str(tmp_path / "stats.npz")


def test_statistics_of_other_classes_are_refused_before_training(tmp_path, old_model):
    cfg = TrainConfig(name="lce", method="lce_direct", model=ModelConfig(embedding_dim=8))
    with pytest.raises(StatisticsMismatch, match=r"stats.npz: classes do not match.*missing \['c'\]"):
        build_objective(cfg, method_of(cfg), ["a", "b", "c"], _stats_file(tmp_path, ["a", "b"]), str(old_model), INPUT)


def test_bct_with_another_dimension_names_both(tmp_path, old_model):
    cfg = TrainConfig(name="bct", method="bct", model=ModelConfig(embedding_dim=16))
    with pytest.raises(DimensionMismatch, match="dimension 16 differs from old dimension 8"):
        build_objective(cfg, method_of(cfg), ["a", "b"], _stats_file(tmp_path, ["a", "b"]), str(old_model), INPUT)


def test_bct_objective_uses_the_old_classifier(tmp_path, old_model):
    cfg = TrainConfig(name="bct", method="bct", model=ModelConfig(embedding_dim=8))
    objective = build_objective(cfg, method_of(cfg), ["a", "b"], _stats_file(tmp_path, ["a", "b"]),
                                str(old_model), INPUT)
    assert objective.old_head.weight.shape == (2, 8) and not objective.old_head.weight.requires_grad


def test_backward_manner_accepts_another_dimension_and_saves_its_transform(tmp_path, old_model):
    from pipeline.model.artifacts import load_model
    from pipeline.model.transformations import build_transforms

    cfg = TrainConfig(name="lce", method="lce_backward", model=ModelConfig(embedding_dim=16))
    objective = build_objective(cfg, method_of(cfg), ["a", "b"], _stats_file(tmp_path, ["a", "b"]),
                                str(old_model), INPUT)
    assert objective.centers.shape == (2, 8)
    transforms = build_transforms(method_of(cfg).trains, 16, 8, cfg.transform)
    model = EmbeddingModel(cfg.model, 1, 2, transforms)
    card = ModelCard(id="lce-1", name="lce", model=cfg.model, classes=["a", "b"], channels=1, mode="L", image_size=28,
                     method=cfg.method, old_dim=8, transforms=list(method_of(cfg).trains))
    write_artifact(tmp_path / "lce", model.state_dict(), card)
    loaded, _ = load_model(tmp_path / "lce")
    assert loaded.transforms["backward_transform"](torch.randn(3, 16)).shape == (3, 8)


def test_the_forward_manner_needs_the_old_models_own_train_split_embeddings(tmp_path, old_model):
    from pipeline.data.embeddings import embeddings_table, write_embeddings

    cfg = TrainConfig(name="fwd", method="lce_forward", model=ModelConfig(embedding_dim=8))
    with pytest.raises(ValueError, match=r"model 'fwd': method 'lce_forward' needs the old model's train-split"):
        check_old_features(None, cfg, old_model, tmp_path)
    other = embeddings_table(["0"], np.zeros(1), np.ones((1, 8)), "other-1", "other", ["a"])
    write_embeddings(tmp_path / "other" / "part-0.parquet", other)
    with pytest.raises(ValueError, match=r"embeddings of model 'other' \(other-1\), not of the old model 'old'"):
        check_old_features(tmp_path / "other", cfg, old_model, tmp_path)


def test_the_global_batch_is_split_over_the_workers():
    assert TrainConfig(name="m", batch_size=128, num_workers=2).worker_batch_size == 64
    with pytest.raises(ValueError, match="batch_size 100 is not a multiple of num_workers 3"):
        TrainConfig(name="m", batch_size=100, num_workers=3)


def test_precision_auto_is_float32_on_cpu_and_explicit_choices_hold():
    cpu = torch.device("cpu")
    assert autocast_dtype("auto", cpu) is None
    assert autocast_dtype("bf16", cpu) is torch.bfloat16 and autocast_dtype("fp32", cpu) is None


def test_bf16_autocast_step_trains_and_keeps_float32_weights():
    cfg = TrainConfig(name="m", precision="bf16", model=ModelConfig(embedding_dim=8))
    model = EmbeddingModel(cfg.model, 1, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    objective = build_objective(cfg, method_of(cfg), ["a", "b", "c"], None, None, INPUT)
    images, labels = torch.randn(6, 1, 28, 28), torch.tensor([0, 1, 2, 0, 1, 2])
    before = model.head.weight.detach().clone()
    with autocast(autocast_dtype(cfg.precision, torch.device("cpu")), torch.device("cpu")):
        features, logits = model(images, labels)
    assert features.dtype == torch.bfloat16
    totals: dict[str, float] = {}
    optimizer_step(objective(features.float(), logits.float(), labels, model.head.weight), optimizer, scheduler,
                   totals, lambda: "test")
    assert model.head.weight.dtype == torch.float32 and not torch.equal(model.head.weight, before)
    assert np.isfinite(totals["loss"])


@pytest.mark.parametrize("method", ["lce_backward", "lce_forward", "lce_bidirectional"])
def test_one_training_step_changes_every_transformations_weights(method, tmp_path, old_model):
    """The optimizer is built as the epoch loop builds it, from the model's parameters: a
    transformation left out of them (the public LCE code's defect) would keep its weights."""
    from pipeline.compat.steps import optimizer_and_schedule
    from pipeline.config import TransformConfig
    from pipeline.model.transformations import build_transforms

    cfg = TrainConfig(name="lce", method=method, model=ModelConfig(embedding_dim=8),
                      transform=TransformConfig(hidden=16))
    transforms = build_transforms(method_of(cfg).trains, 8, 8, cfg.transform)
    model = EmbeddingModel(cfg.model, 1, 2, transforms)
    optimizer, scheduler = optimizer_and_schedule(model.parameters(), 0.01, 0.0, total_steps=10)
    objective = build_objective(cfg, method_of(cfg), ["a", "b"], _stats_file(tmp_path, ["a", "b"]),
                                str(old_model), INPUT)
    images, labels = torch.randn(8, 1, 28, 28), torch.tensor([0, 1] * 4)
    before = {name: p.detach().clone() for name, p in model.transforms.named_parameters()}
    features, logits = model(images, labels)
    optimizer_step(objective(features, logits, labels, model.head.weight, model.transforms,
                             old_features=torch.randn(8, 8)), optimizer, scheduler, {}, lambda: "test")
    unchanged = [name for name, p in model.transforms.named_parameters()
                 if "weight" in name and torch.equal(p, before[name])]
    assert set(model.transforms) == set(method_of(cfg).trains) and not unchanged


def test_a_finite_loss_with_a_non_finite_gradient_stops_before_the_weights_change():
    from pipeline.compat.steps import NonFiniteLoss, optimizer_and_schedule

    weight = torch.nn.Parameter(torch.tensor([0.0, 1.0]))
    optimizer, scheduler = optimizer_and_schedule([weight], 0.1, 0.0, total_steps=10)
    loss = weight.sqrt().sum()  # 1.0, but d sqrt(x) / dx is infinite at x = 0
    with pytest.raises(NonFiniteLoss, match=r"non-finite gradient of parameter 0 of group 0 \(shape \(2,\)\) with a "
                                            r"finite loss 1: step 3"):
        optimizer_step({"loss": loss}, optimizer, scheduler, {}, lambda: "step 3")
    assert weight.tolist() == [0.0, 1.0]


def test_storage_uris_pass_through_and_folders_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert storage_location("s3://bucket/ray") == "s3://bucket/ray"
    assert storage_location("gs://bucket/ray") == "gs://bucket/ray"
    assert storage_location("ray") == str(tmp_path / "ray")


@pytest.fixture()
def embeddings_only(tmp_path):
    """An old model known only by its embeddings (8-d), no classifier."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.config import ImportedModelConfig
    from pipeline.model.encoders import import_model

    pq.write_table(pa.table({"id": ["x"], "embedding": [[0.0] * 7 + [1.0]]}), tmp_path / "team.parquet")
    source = {"kind": "embeddings", "train": str(tmp_path / "team.parquet"), "test": str(tmp_path / "team.parquet")}
    return import_model(ImportedModelConfig(name="old", source=source), ["a"], tmp_path / "team-old")


def test_bct_against_a_model_known_by_its_embeddings_uses_class_means_for_every_class(tmp_path, embeddings_only):
    from pipeline.compat.statistics import OldSpaceStats

    cfg = TrainConfig(name="bct", method="bct", model=ModelConfig(embedding_dim=8))
    stats = _stats_file(tmp_path, ["a", "b"])
    objective = build_objective(cfg, method_of(cfg), ["a", "b"], stats, str(embeddings_only), INPUT)
    torch.testing.assert_close(objective.old_head.weight, torch.as_tensor(OldSpaceStats.load(stats).feature_means,
                                                                           dtype=torch.float32))
    wide = TrainConfig(name="bct", method="bct", model=ModelConfig(embedding_dim=16))
    with pytest.raises(DimensionMismatch, match=r"model 'bct' against statistics .*stats\.npz: new feature dimension "
                                                r"16 differs from old dimension 8"):
        build_objective(wide, method_of(wide), ["a", "b"], stats, str(embeddings_only), INPUT)


def test_l2_is_refused_for_a_model_known_only_by_its_embeddings_saying_why(tmp_path, embeddings_only):
    from pipeline.model.card import ArtifactError

    cfg = TrainConfig(name="l2", method="l2", model=ModelConfig(embedding_dim=8))
    with pytest.raises(ArtifactError, match="method l2 runs the old model on every training batch, and this old model "
                                            "is known only by its embeddings; LCE and BCT need only its embeddings"):
        build_objective(cfg, method_of(cfg), ["a", "b"], None, str(embeddings_only), INPUT)
