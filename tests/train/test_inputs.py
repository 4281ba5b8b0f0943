"""The rows a new model trains on and the statistics over them, from a train-split embeddings set."""

import json

import numpy as np
import pytest
import torch

from pipeline.compat.statistics import OldSpaceStats, compute_old_space_stats
from pipeline.config import CompatConfig, ModelConfig, TrainConfig
from pipeline.data.dataset import in_fraction, in_validation, share_with_rows
from pipeline.data.embeddings import EmbeddingSet
from pipeline.model.artifacts import load_model, write_artifact, write_initial_model
from pipeline.train.inputs import stats_for_model, training_rows

CLASSES = ["a", "b", "c"]


@pytest.fixture()
def dataset(tmp_path):
    root = tmp_path / "ds"
    root.mkdir()
    (root / "classes.json").write_text(json.dumps(CLASSES))
    (root / "dataset.json").write_text(json.dumps({"mode": "L", "image_size": 8, "rows": {"train": 60}}))
    return root


def _embeddings(rows=60, dim=4, seed=0):
    rng = np.random.default_rng(seed)
    ids = np.array([f"img{k:03d}" for k in rng.permutation(rows)], dtype=object)  # not in id order
    return EmbeddingSet("old/train", "old-1", "old", ids, np.arange(rows) % 3, rng.normal(size=(rows, dim)).astype(
        np.float32), CLASSES)


def test_training_rows_are_the_configs_classes_fraction_and_non_validation_rows_in_id_order(dataset):
    embeddings = _embeddings()
    cfg = TrainConfig(name="new", classes=["c", "a"], data_fraction=0.7, seed=3, validation_fraction=0.2)
    rows, labels, classes = training_rows(embeddings, dataset, cfg)
    assert classes == ["a", "c"]  # in the dataset's label order
    expected = sorted(i for i in embeddings.ids if in_fraction(i, 0.7, 3) and not in_validation(i, 0.2)
                      and CLASSES[embeddings.labels[list(embeddings.ids).index(i)]] in ("a", "c"))
    assert embeddings.ids[rows].tolist() == expected and 0 < len(expected) < 40
    assert [classes[y] for y in labels] == [CLASSES[embeddings.labels[r]] for r in rows]


def test_a_share_of_a_small_dataset_keeps_at_least_min_rows(dataset):
    embeddings = _embeddings(rows=600)
    small = TrainConfig(name="old", data_fraction=0.025, seed=1)  # about 15 of 600 rows: less than one batch
    raised = small.model_copy(update={"min_rows": 150})
    assert 5 < len(training_rows(embeddings, dataset, small)[0]) < 30
    rows = training_rows(embeddings, dataset, raised)[0]
    assert 120 < len(rows) < 180  # the fraction rose to 150 / 600, the same seeded rule by id
    assert embeddings.ids[rows].tolist() == sorted(i for i in embeddings.ids if in_fraction(i, 0.25, 1))
    assert share_with_rows(0.025, 150, 60_000) == 0.025 and share_with_rows(0.5, 150, 100) == 1.0


def test_training_rows_refuse_embeddings_of_another_dataset(dataset):
    other = EmbeddingSet("x/train", "x-1", "x", np.array(["i"], dtype=object), np.zeros(1, np.int64),
                         np.ones((1, 4), np.float32), ["a", "z"])
    with pytest.raises(ValueError, match=r"x/train: encoded from a dataset with classes \['a', 'z'\]"):
        training_rows(other, dataset, TrainConfig(name="new"))


def test_stats_for_model_cover_the_label_map_over_the_training_rows(dataset, tmp_path):
    old = write_initial_model(tmp_path / "old", "old", ModelConfig(embedding_dim=4), ["a", "b"])
    embeddings = _embeddings()
    cfg = TrainConfig(name="new", method="lce_direct", data_fraction=0.8)
    stats = OldSpaceStats.load(stats_for_model(cfg, old, embeddings, dataset, tmp_path / "stats.npz"))
    rows, labels, classes = training_rows(embeddings, dataset, cfg)
    expected = compute_old_space_stats(embeddings.vectors[rows], labels, classes, ["a", "b"])
    assert stats.classes == CLASSES and stats.old_classes == ["a", "b"]
    assert np.allclose(stats.centers, expected.centers) and np.allclose(stats.boundaries, expected.boundaries)
    assert stats.counts.sum() == len(rows)
    # Classifier centers: the old model's rows for the classes it knows, the means elsewhere.
    model, card = load_model(old)
    with torch.no_grad():
        model.head.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 2.0, 0, 0]]))
    old_trained = write_artifact(tmp_path / "old2", model.state_dict(), card)
    cfg = cfg.model_copy(update={"compat": CompatConfig(centers="classifier")})
    stats = OldSpaceStats.load(stats_for_model(cfg, old_trained, embeddings, dataset, tmp_path / "clf.npz"))
    assert np.allclose(stats.centers[:2], np.eye(4)[:2]) and np.allclose(stats.centers[2], expected.centers[2])
