"""The model artifact: a folder with weights and a JSON card (design notes, section 4).

    <artifact>/model.pt     state dict of ``EmbeddingModel`` with its transformations, if any
                            (loaded with weights_only=True)
    <artifact>/card.json    id, name, architecture, embedding dim, head, label map, image
                            format, method, parent model, old-space statistics file,
                            training config and metrics
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import torch

from pipeline.config import ModelConfig, TransformConfig
from pipeline.model.networks import EmbeddingModel
from pipeline.model.transformations import build_transforms
from pipeline.names import check_name

WEIGHTS_FILE = "model.pt"
CARD_FILE = "card.json"


class ArtifactError(ValueError):
    """A model artifact that is missing, truncated or does not match its card."""


def new_model_id(name: str) -> str:
    return f"{check_name(name)}-{uuid.uuid4().hex[:8]}"


def write_artifact(folder: str | Path, state_dict: dict[str, torch.Tensor], card: dict[str, Any],
                   weights_file: str = WEIGHTS_FILE) -> Path:
    """Weights (written to a temporary name, then renamed) and the card of an artifact folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state_dict, folder / f".{weights_file}.tmp")
    (folder / f".{weights_file}.tmp").replace(folder / weights_file)
    (folder / CARD_FILE).write_text(json.dumps(card, indent=1, sort_keys=True))
    return folder


def read_card(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / CARD_FILE
    if not path.is_file():
        raise ArtifactError(f"{path}: model card not found (is {folder} a model artifact folder?)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ArtifactError(f"{path}: model card is not valid JSON ({error})") from None


def load_model(folder: str | Path) -> tuple[EmbeddingModel, dict[str, Any]]:
    """The model of an artifact folder in eval mode, and its card."""
    card = read_card(folder)
    config = ModelConfig.model_validate(card["model"])
    transforms = build_transforms(card.get("transforms", []), config.embedding_dim, card.get("old_dim") or 0,
                                  TransformConfig.model_validate(card.get("transform", {})))
    model = EmbeddingModel(config, card["channels"], len(card["classes"]), transforms)
    path = Path(folder) / WEIGHTS_FILE
    if not path.is_file():
        raise ArtifactError(f"{path}: weights file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises RuntimeError/EOFError/UnpicklingError on bad files
        raise ArtifactError(f"{path}: cannot read weights ({type(error).__name__}: {error})") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise ArtifactError(f"{path}: weights do not match the card's architecture "
                            f"{card['model']['architecture']}: {str(error).splitlines()[0]}") from None
    return model.eval(), card
