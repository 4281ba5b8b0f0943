import pytest
import torch

from pipeline.config import ModelConfig
from pipeline.model.networks import EmbeddingModel


@pytest.mark.parametrize("architecture", ["mlp", "small_cnn"])
@pytest.mark.parametrize(("channels", "size"), [(1, 28), (3, 40)])
def test_cpu_backbones_embed_any_image_size(architecture, channels, size):
    model = EmbeddingModel(ModelConfig(architecture=architecture, embedding_dim=16), channels, 5).eval()
    features, logits = model(torch.randn(2, channels, size, size))
    assert features.shape == (2, 16) and logits.shape == (2, 5)
