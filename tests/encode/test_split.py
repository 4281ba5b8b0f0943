"""encode_split on a real Ray cluster: callers that share an output folder, and how its actors take the files."""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pipeline.config import EncodeConfig
from pipeline.data.dataset import read_dataset_info, split_files
from pipeline.data.embeddings import read_embeddings
from pipeline.data.importers import ingest
from pipeline.encode.split import COMPLETE_MARKER, embedding_stream, encode_split
from pipeline.model.card import read_encoder_card
from tests.jobs.helpers import untrained_model

OPTIONS = EncodeConfig(batch_size=100, threads_per_actor=1)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, fashion_subset) -> Path:
    """The real Fashion-MNIST subset, its 1,200 training rows in 4 files."""
    out = tmp_path_factory.mktemp("encode-split") / "dataset"
    ingest(fashion_subset, out, rows_per_file=300)
    return out


def _files(folder: Path) -> dict[str, int]:
    """Every file of ``folder``, hidden ones included, with its modification time."""
    return {path.name: path.stat().st_mtime_ns for path in folder.iterdir()}


@pytest.mark.ray
def test_two_callers_on_one_folder_encode_it_once_and_a_complete_folder_is_left_untouched(
        tmp_path, dataset, ray_cluster, caplog):
    classes = json.loads((dataset / "classes.json").read_text())
    model = untrained_model(tmp_path / "model", classes)
    out = tmp_path / "embeddings" / "m" / "train"
    caplog.set_level(logging.INFO, logger="pipeline.encode.split")
    with ThreadPoolExecutor(2) as pool:  # two fits of one pipeline reading the same model's embeddings
        folders = list(pool.map(lambda _: encode_split(model, dataset, "train", out, OPTIONS), range(2)))
    assert folders == [out, out]
    assert caplog.text.count("already complete") == 1  # the second caller waited, then reused the folder
    assert caplog.text.count("-> part-00000.parquet") == 1  # each part written once
    embeddings = read_embeddings(out)
    assert len(embeddings.ids) == 1200 and len(set(embeddings.ids)) == 1200
    assert sorted(_files(out)) == [COMPLETE_MARKER, *(f"part-{i:05d}.parquet" for i in range(4))]  # no temporary

    before = _files(out)
    assert encode_split(model, dataset, "train", out, OPTIONS) == out
    assert _files(out) == before  # not a file removed, rewritten or added, the marker included


@pytest.mark.ray
@pytest.mark.parametrize("cpus_per_actor", [0.5, 1.0], ids=["decoding-tasks", "actors-decode"])
def test_each_call_of_an_actor_encodes_one_file(tmp_path, dataset, ray_cluster, cpus_per_actor):
    """Actors that decode their files themselves got them all in one call before (Ray Data fused
    the decoding stage into them and bundled batch_size files for each call), so that one actor
    did all the work. Each output block now holds one file's rows, in the files' order."""
    classes = json.loads((dataset / "classes.json").read_text())
    model = untrained_model(tmp_path / "model", classes)
    files = [Path(file) for file in split_files(dataset, "train")]
    options = OPTIONS.model_copy(update={"num_actors": 2, "cpus_per_actor": cpus_per_actor})
    embedded = embedding_stream(model, files, read_dataset_info(dataset), read_encoder_card(model).preprocessing,
                                options, use_gpu=False)
    blocks = [list(dict.fromkeys(batch["path"])) for batch in embedded.iter_batches(batch_size=None)]
    assert [paths for paths in blocks if len(paths) > 1] == []
    assert list(dict.fromkeys(path for paths in blocks for path in paths)) == [str(file) for file in files]
