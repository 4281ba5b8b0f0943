import numpy as np
import pytest
import torch

from pipeline.config import ModelConfig
from pipeline.data.embeddings import embeddings_table, read_embeddings, write_embeddings
from pipeline.model.artifacts import load_model, write_artifact
from pipeline.model.card import ArtifactError, ModelCard
from pipeline.model.networks import EmbeddingModel
from pipeline.names import check_name


def _card(**model):
    config = ModelConfig(**model)
    return ModelCard(id="m-1", name="m", model=config, classes=["a", "b"], channels=1, mode="L", image_size=28,
                     method="independent"), config


def test_artifact_roundtrip_and_clear_errors(tmp_path):
    card, config = _card()
    model = EmbeddingModel(config, 1, 2)
    write_artifact(tmp_path / "m", model.state_dict(), card)
    loaded, loaded_card = load_model(tmp_path / "m")
    assert loaded_card == card
    images = torch.randn(2, 1, 28, 28)
    assert torch.allclose(loaded.embedder(images), model.eval().embedder(images))

    weights = tmp_path / "m" / "model.pt"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ArtifactError, match="model.pt: cannot read weights"):
        load_model(tmp_path / "m")
    weights.unlink()
    with pytest.raises(ArtifactError, match="model.pt: weights file not found"):
        load_model(tmp_path / "m")
    with pytest.raises(ArtifactError, match="card.json: model card not found"):
        load_model(tmp_path / "nothing")


def test_weights_of_another_architecture_are_refused(tmp_path):
    card, _ = _card(embedding_dim=16)
    write_artifact(tmp_path / "m", EmbeddingModel(ModelConfig(embedding_dim=32), 1, 2).state_dict(), card)
    with pytest.raises(ArtifactError, match="do not match the card's architecture small_cnn"):
        load_model(tmp_path / "m")


@pytest.mark.parametrize("name", ["../x", "a/b", "", ".hidden"])
def test_unsafe_names_are_refused(name):
    with pytest.raises(ValueError, match="not allowed"):
        check_name(name)


def test_embeddings_contract(tmp_path):
    vectors = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    table = embeddings_table([f"i{k}" for k in range(5)], np.arange(5), vectors, "m-1", "m", ["a"])
    assert str(table.schema.field("embedding").type) == "fixed_size_list<item: float>[3]"
    write_embeddings(tmp_path / "e" / "part-00000.parquet", table)
    loaded = read_embeddings(tmp_path / "e")
    assert loaded.model_id == "m-1" and loaded.dim == 3 and np.array_equal(loaded.vectors, vectors)
    assert loaded.ids.tolist() == ["i0", "i1", "i2", "i3", "i4"]


def test_repeated_ids_are_refused(tmp_path):
    table = embeddings_table(["a", "a"], np.arange(2), np.ones((2, 3), np.float32), "m-1", "m", ["x"])
    write_embeddings(tmp_path / "e" / "part-00000.parquet", table)
    with pytest.raises(ValueError, match=r"repeated ids \['a'\]"):
        read_embeddings(tmp_path / "e")
