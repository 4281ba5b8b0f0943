"""Backbones with an embedding layer, behind one builder.

``Embedder`` maps images [N, C, H, W] to unnormalised embeddings [N, embedding_dim]; retrieval
and the compatibility losses normalise them. Its backbone is a built-in network (the small CNN
of the demo, a pixel MLP, a torchvision ResNet) or any timm architecture (``timm/<name>``), from
scratch or from a local weights file; no weights are ever downloaded (torchvision models are
built with ``weights=None``, timm ones with ``pretrained=False``). ``model_input_of`` says what a
model reads: its config's ``input``, timm's data config, or the dataset's images in [-1, 1].
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from pipeline.config import ModelConfig, Preprocessing
from pipeline.model.card import ArtifactError, error_summary
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


def timm_network(name: str, in_channels: int = 3, weights: str | Path | None = None) -> nn.Module:
    """A timm architecture without its classifier (``num_classes=0``: its pooled features), from
    scratch or with ``weights`` loaded strictly: a file of another architecture is refused,
    naming it (timm's own loader would skip what does not match). The file's classifier rows are
    left out; ``.safetensors`` or torch files, as timm reads them."""
    import timm  # only a timm model needs it (seconds of start-up in every process)
    from timm.models import load_state_dict

    try:
        network = timm.create_model(name, pretrained=False, num_classes=0, in_chans=in_channels)
    except (RuntimeError, ValueError) as error:
        raise ArtifactError(f"timm architecture {name!r}: {error_summary(error)}") from None
    if weights is None:
        return network
    try:
        state = load_state_dict(str(weights), use_ema=False)
    except Exception as error:  # torch and safetensors raise many types for a bad file
        raise ArtifactError(f"{weights}: cannot read weights ({type(error).__name__}: {error})") from None
    classifier = network.pretrained_cfg.get("classifier") or ()
    heads = tuple(f"{name}." for name in ((classifier,) if isinstance(classifier, str) else classifier))
    state = {key: value for key, value in state.items() if not (heads and key.startswith(heads))}
    try:
        missing, unexpected = network.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shapes that differ
        raise ArtifactError(f"{weights}: weights do not match timm architecture {name!r}: "
                            f"{error_summary(error)}") from None
    if missing or unexpected:
        raise ArtifactError(f"{weights}: weights do not match timm architecture {name!r}: {len(missing)} of its "
                            f"weights missing (first {missing[:3]}), {len(unexpected)} unknown "
                            f"(first {unexpected[:3]})")
    return network


def timm_preprocessing(name: str) -> Preprocessing:
    """timm's eval data config of an architecture (input size, interpolation, mean, std,
    crop_pct) as a ``Preprocessing``."""
    from timm.data import resolve_data_config
    from timm.models import get_pretrained_cfg

    try:
        pretrained = get_pretrained_cfg(name)
    except RuntimeError as error:  # timm: a known architecture with an unknown pretrained tag
        raise ArtifactError(f"timm architecture {name!r}: {error}; declare its input") from None
    if pretrained is None:
        raise ArtifactError(f"timm architecture {name!r}: no data config (an unknown name?); declare its input")
    config = resolve_data_config({}, pretrained_cfg=pretrained.to_dict())
    if config.get("crop_mode", "center") != "center":
        raise ArtifactError(f"timm architecture {name!r}: its data config crops with mode {config['crop_mode']!r}, "
                            "which this project does not reproduce; declare its input (preprocessing)")
    channels, size, _ = config["input_size"]
    return Preprocessing(mode="L" if channels == 1 else "RGB", input_size=size, resize=int(size / config["crop_pct"]),
                         mean=list(config["mean"]), std=list(config["std"]),
                         interpolation="bicubic" if config["interpolation"] == "bicubic" else "bilinear")


def model_input_of(config: ModelConfig, mode: str, image_size: int) -> Preprocessing:
    """What a model of ``config`` reads from a dataset of ``mode`` images of ``image_size``: its
    config's ``input``, else timm's data config for a timm architecture, else the dataset's
    images scaled to [-1, 1]."""
    if config.input is not None:
        return config.input
    if config.timm_name:
        return timm_preprocessing(config.timm_name)
    return Preprocessing.project(mode, image_size)


class Embedder(nn.Module):
    """Backbone followed by the embedding layer (linear + batch norm)."""

    def __init__(self, config: ModelConfig, in_channels: int, pretrained: bool = True) -> None:
        """``pretrained``: a timm backbone starts from ``config.pretrained_file`` (false when the
        weights are loaded after, from an artifact)."""
        super().__init__()
        architecture, embedding_dim = config.architecture, config.embedding_dim
        if config.timm_name:
            self.backbone: nn.Module = timm_network(config.timm_name, in_channels,
                                                    config.pretrained_file if pretrained else None)
            out_features = getattr(self.backbone, "head_hidden_size", None) or self.backbone.num_features
        elif architecture in ("small_cnn", "mlp"):
            self.backbone = (SmallCNN if architecture == "small_cnn" else PixelMLP)(in_channels)
            out_features = self.backbone.out_features
        else:
            self.backbone, out_features = _resnet(architecture, in_channels, config.stem_stride)
            self.backbone.to(memory_format=torch.channels_last)
        self.embedding = nn.Sequential(nn.Linear(out_features, embedding_dim, bias=False),
                                       nn.BatchNorm1d(embedding_dim))
        self.embedding_dim = embedding_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.embedding(self.backbone(images.contiguous(memory_format=torch.channels_last)))


class EmbeddingModel(nn.Module):
    """Embedder, classification head and the transformations trained with them
    (``transforms[BACKWARD]`` is T21, new -> old; ``transforms[FORWARD]`` is T12, old -> new: the names
    of ``pipeline.model.transformations``)."""

    def __init__(self, config: ModelConfig, in_channels: int, num_classes: int,
                 transforms: dict[str, nn.Module] | None = None, pretrained: bool = True) -> None:
        super().__init__()
        self.embedder = Embedder(config, in_channels, pretrained)
        self.head = build_head(config.head, config.embedding_dim, num_classes)
        self.transforms = nn.ModuleDict(transforms or {})

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Unnormalised features and logits (with the head's margin when labels are given)."""
        features = self.embedder(images)
        return features, self.head(features, labels)
