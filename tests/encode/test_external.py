"""An old model known only by its embeddings: the team's Parquet files become this project's
embeddings sets of each split, and a set that cannot stand for a split is refused, naming why."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import ImportedModelConfig
from pipeline.data.bad_rows import DataError
from pipeline.data.embeddings import read_embeddings
from pipeline.data.external import external_dim, external_split
from pipeline.data.importers import ingest
from pipeline.encode.split import COMPLETE_MARKER, encode_split
from pipeline.model.card import read_card
from pipeline.model.encoders import import_model

DIM = 6


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, fashion_subset) -> Path:
    out = tmp_path_factory.mktemp("external") / "dataset"
    ingest(fashion_subset, out, rows_per_file=500)
    return out


def _split(dataset: Path, split: str) -> tuple[list[str], np.ndarray]:
    files = sorted((dataset / split).glob("*.parquet"))
    table = pa.concat_tables(pq.read_table(file, columns=["id", "label"]) for file in files)
    return table.column("id").to_pylist(), table.column("label").to_numpy()


def _team_set(path: Path, ids: list[str], labels: list | None = None, vectors: np.ndarray | None = None) -> Path:
    """What a team's encoder writes: ids in its own order, plain lists of floats, no metadata."""
    vectors = np.random.default_rng(len(ids)).normal(size=(len(ids), DIM)) if vectors is None else vectors
    order = np.random.default_rng(1).permutation(len(ids))
    columns = {"id": [ids[i] for i in order], "embedding": [vectors[i].tolist() for i in order]}
    if labels is not None:
        columns["label"] = [labels[i] for i in order]
    pq.write_table(pa.table(columns), path)
    return path


def _import(tmp_path: Path, train: Path, test: Path) -> Path:
    source = {"kind": "embeddings", "train": str(train), "test": str(test)}
    return import_model(ImportedModelConfig(name="team", source=source), ["T-shirt/top", "Trouser"], tmp_path / "team")


def test_a_teams_sets_become_embeddings_of_each_split_in_its_order(tmp_path, dataset):
    (train_ids, train_labels), (test_ids, _) = _split(dataset, "train"), _split(dataset, "test")
    vectors = np.random.default_rng(0).normal(size=(len(train_ids), DIM)).astype(np.float32)
    model = _import(tmp_path, _team_set(tmp_path / "train.parquet", train_ids, train_labels.tolist(), vectors),
                    _team_set(tmp_path / "test.parquet", test_ids + ["not-in-the-dataset"]))
    card = read_card(model)
    assert card.embedding_dim == DIM and card.preprocessing is None
    out = encode_split(model, dataset, "train", tmp_path / "emb" / "train")
    embeddings = read_embeddings(out)
    assert embeddings.ids.tolist() == train_ids and embeddings.labels.tolist() == train_labels.tolist()
    np.testing.assert_array_equal(embeddings.vectors, vectors)
    assert embeddings.model_id == card.id and embeddings.model_name == "team"
    test = read_embeddings(encode_split(model, dataset, "test", tmp_path / "emb" / "test"))
    assert test.ids.tolist() == test_ids  # the extra id left out
    before = {path.name: path.stat().st_mtime_ns for path in out.iterdir()}
    assert COMPLETE_MARKER in before
    encode_split(model, dataset, "train", out)
    assert {path.name: path.stat().st_mtime_ns for path in out.iterdir()} == before  # a complete folder stays


def test_a_set_missing_split_ids_is_refused_with_their_count_and_the_first_few(tmp_path, dataset):
    train_ids, _ = _split(dataset, "train")
    model = _import(tmp_path, _team_set(tmp_path / "train.parquet", train_ids[3:]),
                    _team_set(tmp_path / "test.parquet", _split(dataset, "test")[0]))
    with pytest.raises(DataError, match=rf"train\.parquet: no embedding for 3 of the {len(train_ids)} images of the "
                                        rf"dataset's train split .*first {re.escape(str(train_ids[:3]))}"):
        encode_split(model, dataset, "train", tmp_path / "out")
    assert not (tmp_path / "out" / COMPLETE_MARKER).exists()


@pytest.mark.parametrize("defect, message", [
    ("label", r"row '.*': label 'Sandal', the dataset says \d \(.*\)"),
    ("length", r"an embedding of 5 values, expected 6"),
    ("repeated", r"repeated ids"),
    ("nan", r"an embedding that is not finite"),
])
def test_a_set_that_cannot_stand_for_the_split_is_refused_naming_the_file(tmp_path, dataset, defect, message):
    ids, labels = _split(dataset, "train")
    names = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    given = [names[label] for label in labels]  # class names are accepted as labels
    vectors = np.random.default_rng(0).normal(size=(len(ids), DIM))
    if defect == "label":
        given[7] = "Sandal" if given[7] != "Sandal" else "Bag"
    if defect == "nan":
        vectors[4, 2] = np.nan
    path = _team_set(tmp_path / "train.parquet", ids, given, vectors)
    if defect in ("length", "repeated"):
        table = pq.read_table(path).to_pydict()
        if defect == "length":
            table["embedding"][-1] = table["embedding"][-1][:5]
        else:
            for key in table:
                table[key].append(table[key][0])
        pq.write_table(pa.table(table), path)
    model = _import(tmp_path, path, _team_set(tmp_path / "test.parquet", _split(dataset, "test")[0]))
    named = r"train\.parquet: " + (r"row .*" if defect in ("length", "nan") else "")
    with pytest.raises(DataError, match=named + message):
        encode_split(model, dataset, "train", tmp_path / "out")


def test_the_dimension_is_read_past_null_rows_and_a_partly_labelled_set_is_refused(tmp_path, dataset):
    ids, _ = _split(dataset, "train")
    first = tmp_path / "set" / "a.parquet"
    first.parent.mkdir()
    pq.write_table(pa.table({"id": ids[:2], "embedding": pa.array([None, [0.5] * DIM], pa.list_(pa.float32()))}),
                   first)
    assert external_dim(first.parent) == DIM
    _team_set(first, ids[: len(ids) // 2])
    _team_set(tmp_path / "set" / "b.parquet", ids[len(ids) // 2 :], [0] * (len(ids) - len(ids) // 2))
    with pytest.raises(DataError, match=r"set: files \[.*a\.parquet'\] have no 'label' column and the others have one"):
        external_split(first.parent, DIM, dataset, "train", "team-1", "team", tmp_path / "out")
