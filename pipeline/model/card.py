"""The model card: the typed, versioned contract of an artifact folder (``card.json``).

A card crosses machines and the model registry, so it is read in one place only: ``read_card``
refuses a missing or an unknown field, naming the file and the field, and a schema version this
code does not know. Two kinds share the envelope (``schema_version``, ``kind``, ``id``, ``name``,
the label map, metrics, the MLflow run):

- ``ModelCard`` (``kind: model``): an embedding model trained by ``jobs.train``, with the image
  format it reads, the method it was trained with and the transformations trained with it;
- ``CmcCard`` (``kind: cmc``): the two transformations a cross-model fit trained between two
  frozen models;
- ``ImportedCard`` (``kind: imported``): a model this project did not train, given as a file
  (TorchScript, ONNX, timm weights: copied into the folder) or only by its embeddings
  (``pipeline.model.encoders``).

A model of either of the first and last kinds encodes images or gives embeddings: an encoder
card (``read_encoder_card``), what an old model or a CMC fit's two models may be.

Cards that 43d4a71 wrote carry no ``schema_version``; they are read as version 1
when they hold exactly the fields that code wrote (``_upgrade_unversioned``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from pipeline.atomic import write_text_atomic
from pipeline.config import ModelConfig, ModelSource, Preprocessing, Strict, TransformConfig, format_error

CARD_FILE = "card.json"
SCHEMA_VERSION = 1


class ArtifactError(ValueError):
    """A model artifact that is missing, truncated or does not match its card."""


def error_summary(error: Exception) -> str:
    """A library exception's message for an ``ArtifactError``: its first two lines (torch puts
    the detail on the second)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return " ".join(lines[:2]) or type(error).__name__


class _Card(Strict):
    schema_version: Literal[1] = SCHEMA_VERSION
    id: str
    name: str
    classes: list[str]             # the label map it was trained on (model 2's for a CMC fit)
    metrics: dict[str, float] = {}
    mlflow_run_id: str | None = None


class ModelCard(_Card):
    kind: Literal["model"] = "model"
    model: ModelConfig
    channels: int                  # channels, mode and size of the dataset it trained on (what it reads:
    mode: Literal["L", "RGB"]      # ``preprocessing``)
    image_size: int
    method: str                    # the catalogue's name (pipeline.compat.methods)
    transforms: list[str] = []     # the transformations trained with it (BACKWARD, FORWARD)
    transform: TransformConfig = TransformConfig()
    old_dim: int | None = None     # the old space's dimension, where it has transformations into it
    parent_model: str | None = None
    old_model_dir: str | None = None
    stats_file: str | None = None  # the old-space statistics it was trained with
    old_features: str | None = None  # the old model's train-split embeddings it read by id (forward)
    input: Preprocessing | None = None  # what it reads; None: the dataset's mode and size in [-1, 1]
    dataset: str = ""
    train_config: dict[str, Any] = {}  # its TrainConfig as dumped (a method registered elsewhere need not be known)

    @property
    def embedding_dim(self) -> int:
        return self.model.embedding_dim

    @property
    def preprocessing(self) -> Preprocessing:
        return self.input or Preprocessing.project(self.mode, self.image_size)


class ImportedCard(_Card):
    """A model imported as it is: its source as given (where its files came from; the model file
    and a classifier are copied into the artifact folder, embeddings sets stay where they are)
    and the dimension its embeddings were measured to have."""

    kind: Literal["imported"] = "imported"
    source: ModelSource
    embedding_dim: int
    preprocessing: Preprocessing | None  # None: known only by its embeddings


class ModelRef(Strict):
    """One of the two frozen models a CMC fit maps between."""

    name: str
    id: str
    dir: str
    dim: int


class CmcCard(_Card):
    kind: Literal["cmc"] = "cmc"
    method: str
    transform: TransformConfig
    old_model: ModelRef
    new_model: ModelRef
    config: dict[str, Any]          # its CmcConfig as dumped


Card = ModelCard | CmcCard | ImportedCard
EncoderCard = ModelCard | ImportedCard
CARD_KINDS: dict[str, type[Card]] = {"model": ModelCard, "cmc": CmcCard, "imported": ImportedCard}

# What 43d4a71 wrote, per kind, before cards had a schema version.
_UNVERSIONED_FIELDS = {
    "model": {"id", "name", "model", "classes", "channels", "mode", "image_size", "method", "old_dim", "transform",
              "transforms", "parent_model", "old_model_dir", "stats_file", "dataset", "train_config", "metrics",
              "mlflow_run_id"},
    "cmc": {"kind", "id", "name", "method", "old_model", "new_model", "classes", "config", "metrics", "mlflow_run_id"},
}


def _upgrade_unversioned(raw: dict[str, Any], path: Path) -> dict[str, Any]:
    """A card without ``schema_version`` as version 1, if it holds exactly what 43d4a71 wrote."""
    kind = "cmc" if raw.get("kind") == "cmc" else "model"
    expected = _UNVERSIONED_FIELDS[kind]
    if set(raw) != expected:
        missing, unknown = sorted(expected - set(raw)), sorted(set(raw) - expected)
        raise ArtifactError(f"{path}: a card without schema_version whose fields are not those of a {kind} card "
                            f"written before schema {SCHEMA_VERSION} (missing {missing}, unknown {unknown}); write "
                            f"the artifact again with jobs.train or jobs.cmc, or add \"schema_version\": "
                            f"{SCHEMA_VERSION} and the fields of pipeline.model.card")
    if kind == "cmc":
        return {**raw, "schema_version": SCHEMA_VERSION, "transform": raw["config"]["transform"]}
    return {**raw, "schema_version": SCHEMA_VERSION, "kind": "model"}


def read_card(folder: str | Path) -> Card:
    """The card of an artifact folder, checked field by field."""
    path = Path(folder) / CARD_FILE
    if not path.is_file():
        raise ArtifactError(f"{path}: model card not found (is {folder} a model artifact folder?)")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ArtifactError(f"{path}: model card is not valid JSON ({error})") from None
    if not isinstance(raw, dict):
        raise ArtifactError(f"{path}: a model card is a JSON object")
    if "schema_version" not in raw:
        raw = _upgrade_unversioned(raw, path)
    elif raw["schema_version"] != SCHEMA_VERSION:
        raise ArtifactError(f"{path}: card schema_version {raw['schema_version']!r}; this code reads "
                            f"{SCHEMA_VERSION} (a newer compat-embed wrote it?)")
    kind = CARD_KINDS.get(raw.get("kind"))
    if kind is None:
        raise ArtifactError(f"{path}: field 'kind': expected one of {sorted(CARD_KINDS)} (got {raw.get('kind')!r})")
    try:
        return kind.model_validate(raw)
    except ValidationError as error:
        raise ArtifactError(format_error(str(path), error).replace("key '", "field '")) from None


def read_model_card(folder: str | Path) -> ModelCard:
    """The card of a model this project trained (not a CMC fit, not an imported model)."""
    card = read_card(folder)
    if not isinstance(card, ModelCard):
        raise ArtifactError(f"{folder}: not a model trained by compat-embed (card kind {card.kind!r})")
    return card


def read_encoder_card(folder: str | Path) -> EncoderCard:
    """The card of a model that gives embeddings: trained here or imported (not a CMC fit)."""
    card = read_card(folder)
    if isinstance(card, CmcCard):
        raise ArtifactError(f"{folder}: a CMC artifact, not a model (card kind {card.kind!r})")
    return card


def write_card(folder: str | Path, card: Card) -> Path:
    """``card.json`` through a temporary name and a rename (after the weights: a folder with a
    card holds its weights)."""
    path = Path(folder) / CARD_FILE
    text = json.dumps(card.model_dump(mode="json"), indent=1, sort_keys=True)
    write_text_atomic(path, text)
    return path
