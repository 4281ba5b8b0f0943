"""Model lineage in the MLflow Model Registry.

Each model artifact folder (weights + card, and the old-space statistics it was trained with as
``old_space_stats.npz``) is logged under ``model/`` of its training run (the card's
``mlflow_run_id`` when that run is in this tracking store, else a new ``register`` run) and
registered as a version of one registered model. The version's tags carry the card's id, name,
method and dimension and ``parent_version``: the lineage v1 -> v2 -> v3 is the chain of parents,
each checked at registration to be the model the card was trained against.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import mlflow.artifacts
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipeline.config import DEFAULT_EXPERIMENT
from pipeline.model.card import CARD_FILE, ModelCard, read_card, read_model_card
from pipeline.names import check_name
from pipeline.tracking import DESCRIPTION_TAG, experiment_id, finished_run

log = logging.getLogger(__name__)
ARTIFACT_PATH = "model"
STATS_FILE = "old_space_stats.npz"  # the statistics the model was trained with, registered beside it


@dataclass(frozen=True)
class LineageVersion:
    version: str
    parent: str | None  # the parent's version, None for the lineage's first model
    card_id: str
    source: str         # the artifact folder's URI


def _training_run(client: MlflowClient, card: ModelCard, experiment: str, tracking_uri: str) -> tuple[str, bool]:
    """The run that holds ``card``'s artifact: its training run, or a new one (True) where the
    training run is in another store."""
    run_id = card.mlflow_run_id
    if run_id:
        try:
            client.get_run(run_id)
            return run_id, False
        except MlflowException:
            log.info("registry: training run %s of %s is not in this store; logging to a new run", run_id, card.id)
    run = client.create_run(experiment_id(tracking_uri, experiment), run_name=f"register {card.name}",
                            tags={"kind": "register", DESCRIPTION_TAG: f"Holds {card.name}'s artifact for the model "
                                                                       f"registry (its training run is in another store)"})
    return run.info.run_id, True


def _check_parent(client: MlflowClient, registered_model: str, parent_version: str, card: ModelCard) -> None:
    """The parent version exists and is the model the card was trained against (by name)."""
    try:
        parent = client.get_model_version(registered_model, parent_version)
    except MlflowException as error:
        raise ValueError(f"registered model {registered_model!r} has no version {parent_version} to be the parent "
                         f"of {card.id} ({error.error_code})") from None
    trained_against, registered_as = card.parent_model, parent.tags.get("model_name")
    if trained_against and registered_as and trained_against != registered_as:
        raise ValueError(f"{card.id} was trained against {trained_against!r}, but {registered_model} version "
                         f"{parent_version} is {registered_as!r}")


def register_model(tracking_uri: str, registered_model: str, artifact_dir: str | Path, parent_version: str | None,
                   experiment: str = DEFAULT_EXPERIMENT) -> LineageVersion:
    """Log ``artifact_dir`` (and the card's old-space statistics, as ``STATS_FILE``) under
    ``model/`` of its training run and register it as the next version of ``registered_model``."""
    check_name(registered_model, "registered model name")
    parent_version = None if parent_version is None else str(parent_version)
    client = MlflowClient(tracking_uri)
    card = read_model_card(artifact_dir)
    if parent_version is not None:
        _check_parent(client, registered_model, parent_version, card)
    run_id, created = _training_run(client, card, experiment, tracking_uri)
    with finished_run(client, run_id) if created else nullcontext():
        client.log_artifacts(run_id, str(artifact_dir), ARTIFACT_PATH)
        if card.stats_file and Path(card.stats_file).is_file():
            with tempfile.TemporaryDirectory() as folder:  # under a fixed name, for reports on other machines
                shutil.copy(card.stats_file, Path(folder) / STATS_FILE)
                client.log_artifact(run_id, str(Path(folder) / STATS_FILE), ARTIFACT_PATH)
    try:
        client.create_registered_model(registered_model, description="compat-embed model lineage")
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    tags = {"card_id": card.id, "model_name": card.name, "method": card.method,
            "embedding_dim": str(card.embedding_dim), "parent_version": parent_version or ""}
    source = f"{client.get_run(run_id).info.artifact_uri}/{ARTIFACT_PATH}"
    version = client.create_model_version(registered_model, source, run_id=run_id, tags=tags,
                                          description=f"{card.name} ({card.id}), parent version "
                                                      f"{parent_version or 'none'}")
    log.info("registry: %s version %s = %s (parent %s)", registered_model, version.version, card.id, parent_version)
    return LineageVersion(str(version.version), parent_version, card.id, source)


def registered_chain(tracking_uri: str, registered_model: str,
                     versions: list[str] | None = None) -> list[LineageVersion]:
    """The newest version and its ancestors, oldest first (or the given ``versions``, each of
    which must be the parent of the next)."""
    client = MlflowClient(tracking_uri)
    found = {str(v.version): v for v in client.search_model_versions(f"name = '{check_name(registered_model)}'")}
    if not found:
        raise ValueError(f"registered model {registered_model!r} has no versions in {tracking_uri}")
    entries = {number: LineageVersion(number, v.tags.get("parent_version") or None, v.tags.get("card_id", ""), v.source)
               for number, v in found.items()}
    if versions is None:  # the newest version's ancestry, oldest first
        versions = [max(entries, key=int)]
        while entries[versions[-1]].parent is not None:
            if entries[versions[-1]].parent not in entries or entries[versions[-1]].parent in versions:
                raise ValueError(f"registered model {registered_model!r} version {versions[-1]}: parent version "
                                 f"{entries[versions[-1]].parent} is missing or repeats")
            versions.append(entries[versions[-1]].parent)
        versions.reverse()
    chain = []
    for number in map(str, versions):
        if number not in entries:
            raise ValueError(f"registered model {registered_model!r} has no version {number} (has {sorted(entries)})")
        if chain and entries[number].parent != chain[-1].version:
            raise ValueError(f"{registered_model} version {number}: its parent is version {entries[number].parent}, "
                             f"not {chain[-1].version}")
        chain.append(entries[number])
    return chain


def download_version(tracking_uri: str, version: LineageVersion, out_dir: str | Path) -> Path:
    """The version's artifact folder under ``out_dir`` (kept when already there with the same card id)."""
    out_dir = Path(out_dir)
    if (out_dir / CARD_FILE).is_file() and read_card(out_dir).id == version.card_id:
        return out_dir
    staging = out_dir.parent / f".download-{out_dir.name}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    downloaded = mlflow.artifacts.download_artifacts(artifact_uri=version.source, dst_path=str(staging),
                                                     tracking_uri=tracking_uri)
    shutil.rmtree(out_dir, ignore_errors=True)
    Path(downloaded).rename(out_dir)
    shutil.rmtree(staging)
    return out_dir
