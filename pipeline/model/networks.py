"""Backbones with an embedding layer, behind one builder.

``build_embedder`` returns a network that maps images [N, C, H, W] to unnormalised embeddings
[N, embedding_dim]; retrieval and the compatibility losses normalise them. No weights are ever
downloaded: torchvision models are built with ``weights=None``.
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.config import ModelConfig
from pipeline.model.heads import build_head


class SmallCNN(nn.Module):
    """Two conv blocks for small images (28x28 Fashion-MNIST).

    The stem is a stride-2 5x5 conv rather than conv + max-pool: on CPU the full-resolution
    activations of the latter cost more than all the multiply-adds (2.3x slower per step,
    measured with 2 threads). Activations use the channels-last layout, which oneDNN runs faster.
    """

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 5, stride=2, padding=2, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(7),
            nn.Flatten(),
        )
        self.out_features = 64 * 7 * 7
        self.to(memory_format=torch.channels_last)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(images.contiguous(memory_format=torch.channels_last))


class PixelMLP(nn.Module):
    """A perceptron on the image pooled to 14x14: the weaker backbone of the CPU backbone
    scenario (an old model a convolutional one upgrades), of any input size."""

    def __init__(self, in_channels: int, hidden: int = 512) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.AdaptiveAvgPool2d(14), nn.Flatten(),
                                      nn.Linear(in_channels * 14 * 14, hidden, bias=False), nn.BatchNorm1d(hidden),
                                      nn.ReLU(inplace=True))
        self.out_features = hidden

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(images)


def _resnet(kind: str, in_channels: int, stem_stride: int) -> tuple[nn.Module, int]:
    """A torchvision ResNet with a small-image stem and no classifier: a 3x3 conv of stride 1 or
    2, or (``stem_stride`` 4) stride 2 followed by the usual max-pool. At 28x28 on 2 CPU threads
    a ResNet-18 trains 74, 240 and 685 img/s with strides 1, 2, 4 (measured)."""
    # Imported here: torchvision costs 1.6 s of start-up in every process that loads a model (it
    # imports torch._dynamo), which the small CNN does not need; Ray Data's encoders paid it.
    from torchvision.models import resnet18, resnet50

    network = {"resnet18": resnet18, "resnet50": resnet50}[kind](weights=None)
    network.conv1 = nn.Conv2d(in_channels, 64, 3, stride=min(stem_stride, 2), padding=1, bias=False)
    network.maxpool = nn.MaxPool2d(3, stride=2, padding=1) if stem_stride == 4 else nn.Identity()
    out_features = network.fc.in_features
    network.fc = nn.Identity()
    return network, out_features


class Embedder(nn.Module):
    """Backbone followed by the embedding layer (linear + batch norm)."""

    def __init__(self, architecture: str, in_channels: int, embedding_dim: int, stem_stride: int = 1) -> None:
        super().__init__()
        if architecture in ("small_cnn", "mlp"):
            self.backbone: nn.Module = (SmallCNN if architecture == "small_cnn" else PixelMLP)(in_channels)
            out_features = self.backbone.out_features
        else:
            self.backbone, out_features = _resnet(architecture, in_channels, stem_stride)
            self.backbone.to(memory_format=torch.channels_last)
        self.embedding = nn.Sequential(nn.Linear(out_features, embedding_dim, bias=False), nn.BatchNorm1d(embedding_dim))
        self.embedding_dim = embedding_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.embedding(self.backbone(images.contiguous(memory_format=torch.channels_last)))


class EmbeddingModel(nn.Module):
    """Embedder, classification head and the transformations trained with them
    (``transforms[BACKWARD]`` is T21, new -> old; ``transforms[FORWARD]`` is T12, old -> new: the names
    of ``pipeline.model.transformations``)."""

    def __init__(self, config: ModelConfig, in_channels: int, num_classes: int,
                 transforms: dict[str, nn.Module] | None = None) -> None:
        super().__init__()
        self.embedder = Embedder(config.architecture, in_channels, config.embedding_dim, config.stem_stride)
        self.head = build_head(config.head, config.embedding_dim, num_classes)
        self.transforms = nn.ModuleDict(transforms or {})

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Unnormalised features and logits (with the head's margin when labels are given)."""
        features = self.embedder(images)
        return features, self.head(features, labels)
