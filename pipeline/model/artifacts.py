"""Artifact folders (docs/design.md, 'Data contracts'): weights and a card (``pipeline.model.card``).

    <artifact>/model.pt       state dict of ``EmbeddingModel`` with its transformations, if any
    <artifact>/transforms.pt  a CMC artifact's state dict of its two transformations
    <artifact>/card.json      the typed card

Weights are loaded with ``weights_only=True``; the weights file is written through a temporary
name and a rename, then the card the same way, so a folder with a card holds its weights.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import torch
from torch import nn

from pipeline.atomic import write_atomic
from pipeline.config import ModelConfig, TrainConfig, TransformConfig
from pipeline.model.card import ArtifactError, CmcCard, ModelCard, read_card, read_model_card, write_card
from pipeline.model.networks import EmbeddingModel
from pipeline.model.transformations import BACKWARD, FORWARD, build_transforms
from pipeline.names import check_name

WEIGHTS_FILE = "model.pt"
TRANSFORMS_FILE = "transforms.pt"


def new_model_id(name: str) -> str:
    return f"{check_name(name)}-{uuid.uuid4().hex[:8]}"


def write_artifact(folder: str | Path, state_dict: dict[str, torch.Tensor], card: ModelCard | CmcCard) -> Path:
    """The weights file of ``card``'s kind, then the card, each through a temporary name."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / (TRANSFORMS_FILE if isinstance(card, CmcCard) else WEIGHTS_FILE)
    write_atomic(weights, lambda temporary: torch.save(state_dict, temporary))
    write_card(folder, card)
    return folder


def write_initial_model(folder: str | Path, name: str, config: ModelConfig, classes: list[str], *,
                        channels: int = 1, mode: str = "L", image_size: int = 28, model_id: str | None = None) -> Path:
    """A model artifact with freshly initialised weights (drawn from torch's global generator), as
    if trained for no step on ``classes``: an encoder for benchmarks and tests of the jobs."""
    untrained = TrainConfig(name=name, model=config, classes=classes)
    card = ModelCard(id=model_id or new_model_id(name), name=name, model=config, classes=classes, channels=channels,
                     mode=mode, image_size=image_size, method=untrained.method, train_config=untrained.model_dump())
    return write_artifact(folder, EmbeddingModel(config, channels, len(classes)).state_dict(), card)


def _load_weights(module: nn.Module, path: Path, what: str) -> None:
    if not path.is_file():
        raise ArtifactError(f"{path}: weights file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises RuntimeError/EOFError/UnpicklingError on bad files
        raise ArtifactError(f"{path}: cannot read weights ({type(error).__name__}: {error})") from None
    try:
        module.load_state_dict(state)
    except RuntimeError as error:
        raise ArtifactError(f"{path}: weights do not match {what}: {str(error).splitlines()[0]}") from None


def load_model(folder: str | Path) -> tuple[EmbeddingModel, ModelCard]:
    """The model of an artifact folder in eval mode, and its card."""
    card = read_model_card(folder)
    transforms = build_transforms(card.transforms, card.embedding_dim, card.old_dim or 0, card.transform)
    model = EmbeddingModel(card.model, card.preprocessing.channels, len(card.classes), transforms, pretrained=False)
    _load_weights(model, Path(folder) / WEIGHTS_FILE, f"the card's architecture {card.model.architecture}")
    return model.eval(), card


def build_cmc_transforms(old_dim: int, new_dim: int, config: TransformConfig) -> nn.ModuleDict:
    """The two transformations of a CMC fit: T21 (new -> old) and T12 (old -> new)."""
    return nn.ModuleDict(build_transforms((BACKWARD, FORWARD), new_dim, old_dim, config))


def load_cmc(folder: str | Path) -> tuple[nn.ModuleDict, CmcCard]:
    """The two transformations of a CMC artifact in eval mode, and its card."""
    card = read_card(folder)
    if not isinstance(card, CmcCard):
        raise ArtifactError(f"{folder}: not a CMC artifact (card kind {card.kind!r})")
    transforms = build_cmc_transforms(card.old_model.dim, card.new_model.dim, card.transform)
    _load_weights(transforms, Path(folder) / TRANSFORMS_FILE, "the card's transformations")
    return transforms.eval(), card
