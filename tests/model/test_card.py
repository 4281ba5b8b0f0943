"""The typed model card: one loader, every field checked, cards of 43d4a71 still read."""

import json
import re

import pytest

from pipeline.config import ModelConfig
from pipeline.model.card import ArtifactError, CmcCard, ModelCard, read_card, write_card

# A card exactly as 43d4a71's jobs.train wrote it (no schema_version, no kind).
UNVERSIONED_MODEL = {
    "id": "lce-1a2b3c4d", "name": "lce", "model": ModelConfig().model_dump(), "classes": ["a", "b"], "channels": 1,
    "mode": "L", "image_size": 28, "method": "lce_backward", "old_dim": 64,
    "transform": {"blocks": 1, "paths": 1, "hidden": 256}, "transforms": ["backward_transform"], "parent_model": "old",
    "old_model_dir": "/runs/models/old", "stats_file": "/runs/stats/lce.npz", "dataset": "/data/fm",
    "train_config": {"name": "lce"}, "metrics": {"epoch": 3.0}, "mlflow_run_id": "abc"}
UNVERSIONED_CMC = {
    "kind": "cmc", "id": "c-1", "name": "c", "method": "lce_cmc", "classes": ["a", "b"],
    "old_model": {"name": "old", "id": "old-1", "dir": "/m/old", "dim": 64},
    "new_model": {"name": "new", "id": "new-1", "dir": "/m/new", "dim": 128},
    "config": {"transform": {"blocks": 1, "paths": 1, "hidden": 32}}, "metrics": {}, "mlflow_run_id": None}


def _write(folder, raw):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "card.json").write_text(json.dumps(raw))
    return folder


def test_a_card_round_trips_and_is_written_with_its_version_and_no_temporary_file(tmp_path):
    card = ModelCard(id="m-1", name="m", model=ModelConfig(embedding_dim=8), classes=["a"], channels=3, mode="RGB",
                     image_size=32, method="independent")
    write_card(tmp_path, card)
    assert read_card(tmp_path) == card
    assert json.loads((tmp_path / "card.json").read_text())["schema_version"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["card.json"]


def test_cards_written_before_the_schema_version_still_load(tmp_path):
    model = read_card(_write(tmp_path / "model", UNVERSIONED_MODEL))
    assert isinstance(model, ModelCard) and model.transforms == ["backward_transform"] and model.old_dim == 64
    cmc = read_card(_write(tmp_path / "cmc", UNVERSIONED_CMC))
    assert isinstance(cmc, CmcCard) and cmc.transform.hidden == 32 and cmc.new_model.dim == 128


@pytest.mark.parametrize(("change", "message"), [
    ({"schema_version": 1, "kind": "model", "mode": None}, "card.json: field 'mode': Input should be 'L' or 'RGB'"),
    ({"schema_version": 1, "kind": "model", "colour": "red"}, "card.json: unknown field 'colour'"),
    ({"schema_version": 1, "kind": "model", "image_size": "big"}, "field 'image_size'"),
    ({"schema_version": 2}, "card schema_version 2; this code reads 1"),
    ({"schema_version": 1, "kind": "tokenizer"}, "card.json: field 'kind': expected one of ['cmc', 'imported', 'model'] (got 'tokenizer')"),
])
def test_a_bad_field_is_refused_naming_the_file_and_the_field(tmp_path, change, message):
    with pytest.raises(ArtifactError, match=re.escape(message)):
        read_card(_write(tmp_path, {**UNVERSIONED_MODEL, **change}))


def test_a_missing_field_is_refused_and_an_unversioned_card_says_how_to_convert_it(tmp_path):
    versioned = {**UNVERSIONED_MODEL, "schema_version": 1, "kind": "model"}
    del versioned["classes"]
    with pytest.raises(ArtifactError, match="card.json: missing field 'classes'"):
        read_card(_write(tmp_path / "v1", versioned))
    partial = {key: value for key, value in UNVERSIONED_MODEL.items() if key != "mode"}
    with pytest.raises(ArtifactError, match=r"missing \['mode'\], unknown \[\]\); write the artifact again with "
                                            r"jobs.train or jobs.cmc, or add \"schema_version\": 1"):
        read_card(_write(tmp_path / "v0", partial))
