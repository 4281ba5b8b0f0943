"""The streamed training rows: the rows the held path trains on, decoded alike, augmented on a
draw of their own, with the old features of the same ids; and a fit that streams them on a
real Ray cluster, the same in every rerun of its seed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pipeline.config import AugmentConfig, Preprocessing
from pipeline.data.dataset import split_files
from pipeline.data.decode import load_split
from pipeline.data.embeddings import embeddings_table, write_embeddings
from pipeline.data.importers import ingest
from pipeline.data.preprocess import model_input
from pipeline.train.stream import SHARED_DECODE_TASKS, StreamSpec, decode_training_file, decoding_pool, selected_rows
from tests.jobs.helpers import run_job

GRAY = Preprocessing.project("L", 28)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, fashion_subset) -> Path:
    out = tmp_path_factory.mktemp("stream") / "dataset"
    ingest(fashion_subset, out, rows_per_file=300)
    return out


def _spec(dataset: Path, **changes) -> StreamSpec:
    fields = {"dataset": str(dataset), "labels_kept": [0, 2, 4], "fraction": 0.5, "seed": 3,
              "validation_fraction": 0.1, "preprocessing": GRAY, "augment": None, "old_features": None, **changes}
    return StreamSpec(**fields)


@pytest.mark.parametrize(("decode_cpus", "tasks", "task_cpus"), [(0, SHARED_DECODE_TASKS, 0), (1, 1, 1), (2.5, 2, 1),
                                                                    (0.5, 1, 0.5)])
def test_decoding_tasks_never_take_more_cpus_than_the_fit_reserves(decode_cpus, tasks, task_cpus):
    pool, cpus = decoding_pool(decode_cpus)
    assert (pool.size, cpus) == (tasks, task_cpus)
    assert decode_cpus == 0 or tasks * cpus <= decode_cpus


def _decoded(spec: StreamSpec, draw: float = 0.25) -> dict[str, np.ndarray]:
    files = split_files(spec.dataset, "train")
    batches = list(decode_training_file({"path": np.array(files, dtype=object), "draw": np.full(len(files), draw)},
                                        spec))
    return {key: np.concatenate([batch[key] for batch in batches]) for key in batches[0]}


def test_the_stream_holds_the_rows_the_held_path_trains_on_decoded_alike(dataset):
    spec = _spec(dataset)
    streamed = _decoded(spec)
    ids, images, labels = load_split(dataset, "train", [0, 2, 4], 0.5, 3, validation_fraction=0.1)
    assert sorted(streamed["id"]) == sorted(ids) and selected_rows(spec) == len(ids)
    assert streamed["id"].tolist() != ids  # each file's rows in an order drawn from its draw
    held = [ids.index(row_id) for row_id in streamed["id"]]
    assert streamed["label"].tolist() == [{0: 0, 2: 1, 4: 2}[int(labels[i])] for i in held]  # the model's label map
    np.testing.assert_array_equal(model_input(streamed["pixels"], GRAY).numpy(), images[held])


def test_augmentation_draws_per_image_from_the_draw_it_is_given(dataset):
    spec = _spec(dataset, augment=AugmentConfig(color_jitter=0.2))
    first, again, other = _decoded(spec, 0.25), _decoded(spec, 0.25), _decoded(spec, 0.75)
    np.testing.assert_array_equal(first["pixels"], again["pixels"])  # the same draw: the same rows and crops
    by_id = {row_id: row for row, row_id in enumerate(other["id"])}
    other_pixels = other["pixels"][[by_id[row_id] for row_id in first["id"]]]
    assert (first["pixels"] != other_pixels).any(axis=(1, 2, 3)).mean() > 0.9  # another draw: new crops
    plain = _decoded(_spec(dataset), 0.25)
    assert (first["pixels"] != plain["pixels"]).any(axis=(1, 2, 3)).mean() > 0.9


def test_the_old_features_join_by_id(dataset, tmp_path):
    ids, _, _ = load_split(dataset, "train")
    vectors = np.random.default_rng(0).normal(size=(len(ids), 4)).astype(np.float32)
    order = np.random.default_rng(1).permutation(len(ids))  # the set in another order than the dataset's
    write_embeddings(tmp_path / "old" / "part-00000.parquet", embeddings_table(
        [ids[i] for i in order], np.zeros(len(ids)), vectors[order], "old-1", "old", [str(c) for c in range(10)]))
    streamed = _decoded(_spec(dataset, old_features=str(tmp_path / "old")))
    position = {row_id: row for row, row_id in enumerate(ids)}
    np.testing.assert_array_equal(streamed["old_features"], vectors[[position[i] for i in streamed["id"]]])


@pytest.mark.slow
@pytest.mark.ray
def test_a_streamed_fit_is_the_same_in_every_rerun_of_its_seed(tmp_path, dataset, ray_cluster, caplog):
    config = tmp_path / "new.yaml"
    config.write_text(yaml.safe_dump({
        "name": "streamed", "method": "independent", "epochs": 2, "batch_size": 32, "cpus_per_worker": 1,
        "data_fraction": 0.25, "ingest": "stream", "augment": {}, "model": {"embedding_dim": 16}}))
    weights = []
    for run in ("a", "b"):
        code, logged = run_job("train", "--config", config, "--dataset", dataset, "--out", tmp_path / run,
                               "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--storage-path",
                               tmp_path / "ray", "--run-name", f"streamed-{run}", caplog=caplog)
        assert code == 0, logged
        weights.append(torch.load(tmp_path / run / "model.pt", weights_only=True))
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])
