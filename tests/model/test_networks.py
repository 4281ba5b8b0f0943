import pytest
import timm
import torch

from pipeline.config import ModelConfig, Preprocessing
from pipeline.model.networks import EmbeddingModel, model_input_of


@pytest.mark.parametrize("architecture", ["mlp", "small_cnn"])
@pytest.mark.parametrize(("channels", "size"), [(1, 28), (3, 40)])
def test_cpu_backbones_embed_any_image_size(architecture, channels, size):
    model = EmbeddingModel(ModelConfig(architecture=architecture, embedding_dim=16), channels, 5).eval()
    features, logits = model(torch.randn(2, channels, size, size))
    assert features.shape == (2, 16) and logits.shape == (2, 5)


def test_a_timm_backbone_starts_from_its_weights_file_without_its_classifier(tmp_path):
    source = timm.create_model("resnet10t", num_classes=7)
    torch.save(source.state_dict(), tmp_path / "start.pth")
    config = ModelConfig(architecture="timm/resnet10t", embedding_dim=16, pretrained_file=str(tmp_path / "start.pth"))
    model = EmbeddingModel(config, 3, 5).eval()
    started = model.embedder.backbone.state_dict()
    assert started.keys() == {key for key in source.state_dict() if not key.startswith("fc.")}
    assert all(torch.equal(value, source.state_dict()[key]) for key, value in started.items())
    features, logits = model(torch.randn(2, 3, 48, 48))
    assert features.shape == (2, 16) and logits.shape == (2, 5)
    fresh = EmbeddingModel(config, 3, 5, pretrained=False)  # an artifact's model: weights come from model.pt
    assert not torch.equal(fresh.embedder.backbone.conv1[0].weight, started["conv1.0.weight"])


def test_what_a_model_reads_its_config_timms_data_config_or_the_datasets_images():
    assert model_input_of(ModelConfig(), "L", 28) == Preprocessing.project("L", 28)
    timm_input = model_input_of(ModelConfig(architecture="timm/resnet10t"), "L", 28)
    assert (timm_input.mode, timm_input.input_size, timm_input.interpolation) == ("RGB", 176, "bicubic")
    declared = Preprocessing(mode="RGB", input_size=96, mean=[0.5] * 3, std=[0.25] * 3)
    assert model_input_of(ModelConfig(architecture="timm/resnet10t", input=declared), "L", 28) == declared


def test_an_unknown_architecture_or_a_weights_file_for_a_built_in_one_is_refused():
    with pytest.raises(ValueError, match=r"architecture 'resnet10t': expected one of .* or 'timm/<name>'"):
        ModelConfig(architecture="resnet10t")
    with pytest.raises(ValueError, match="only a timm architecture starts from a weights file"):
        ModelConfig(architecture="small_cnn", pretrained_file="w.pth")
    with pytest.raises(ValueError, match="timm architecture 'no_such_net'"):
        EmbeddingModel(ModelConfig(architecture="timm/no_such_net"), 3, 5)
