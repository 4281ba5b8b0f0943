"""Old models this project did not train, through the real jobs on a tiny subset of the real
Fashion-MNIST and a real local Ray: TorchScript and ONNX files exported here encode the dataset
(jobs.import_model, jobs.encode) into the torch model's embeddings; a model known only by its
embeddings is the old model of a whole pipeline (jobs.pipeline's run_pipeline)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from PIL import Image
from torch import nn

from pipeline.config import Preprocessing
from pipeline.data.embeddings import read_embeddings
from pipeline.data.importers import ingest
from pipeline.data.preprocess import eval_pixels, model_input
from pipeline.flows.configs import pipeline_from_dict
from pipeline.flows.experiment import run_pipeline
from pipeline.model.card import read_card
from tests.jobs.helpers import run_job

pytestmark = pytest.mark.ray
RGB32 = Preprocessing(mode="RGB", input_size=32, resize=36, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, fashion_subset) -> Path:
    out = tmp_path_factory.mktemp("imported") / "dataset"
    ingest(fashion_subset, out, rows_per_file=400)
    return out


def _network(channels: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(channels, 8, 3, stride=2), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                         nn.Flatten(), nn.Linear(32, 12)).eval()


def _split(dataset: Path, split: str) -> pa.Table:
    return pa.concat_tables(pq.read_table(file) for file in sorted((dataset / split).glob("*.parquet")))


def _embedded(network: nn.Module, table: pa.Table, preprocessing: Preprocessing) -> np.ndarray:
    """The torch network's embeddings of the split's images, decoded as the model declares."""
    pixels = np.stack([eval_pixels(Image.open(io.BytesIO(data)), preprocessing)
                       for data in table.column("image").to_pylist()])
    with torch.no_grad():
        return network(model_input(pixels, preprocessing)).numpy()


@pytest.mark.parametrize("kind", ["torchscript", "onnx"])
def test_an_exported_old_model_encodes_the_dataset_into_the_torch_models_embeddings(kind, tmp_path, dataset,
                                                                                    ray_cluster, caplog):
    network, file = _network(3), tmp_path / f"old.{kind}"
    example = torch.zeros(2, *RGB32.shape)
    if kind == "torchscript":
        torch.jit.save(torch.jit.trace(network, example), file)
    else:
        torch.onnx.export(network, (example,), file, dynamo=True, dynamic_shapes=({0: torch.export.Dim("batch")},))
    config = tmp_path / "old.yaml"
    source = {"kind": kind, "file": str(file), "preprocessing": RGB32.model_dump()}
    config.write_text(yaml.safe_dump({"name": "old", "classes": "first_half", "source": source}))
    code, logged = run_job("import_model", "--config", config, "--dataset", dataset, "--out", tmp_path / "old",
                           caplog=caplog)
    assert code == 0, logged
    assert read_card(tmp_path / "old").classes == ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat"]
    code, logged = run_job("encode", "--model", tmp_path / "old", "--dataset", dataset, "--split", "test",
                           "--out", tmp_path / "embeddings", "--batch-size", "100", "--threads-per-actor", "1",
                           caplog=caplog)
    assert code == 0, logged
    encoded, test = read_embeddings(tmp_path / "embeddings"), _split(dataset, "test")
    assert encoded.ids.tolist() == test.column("id").to_pylist()  # the gray images read as RGB at 36 -> 32 px
    np.testing.assert_allclose(encoded.vectors, _embedded(network, test, RGB32), atol=1e-5)


def test_an_old_model_known_only_by_its_embeddings_is_the_old_model_of_a_pipeline(tmp_path, dataset, fashion_subset,
                                                                                   ray_cluster):
    network, gray = _network(1), Preprocessing.project("L", 28)
    sets = {}
    for split in ("train", "test"):
        table = _split(dataset, split)
        sets[split] = tmp_path / f"team-{split}.parquet"
        vectors = _embedded(network, table, gray)
        pq.write_table(pa.table({"id": table.column("id"), "embedding": [v.tolist() for v in vectors]}), sets[split])
    small = {"blocks": 1, "paths": 1, "hidden": 32}
    cfg = pipeline_from_dict({
        "output_dir": str(tmp_path / "run"), "data": {"source": str(fashion_subset), "root": str(dataset)},
        "mlflow": {"experiment": "imported"},
        "train": {"epochs": 1, "batch_size": 64, "cpus_per_worker": 1, "model": {"embedding_dim": 12}},
        "encode": {"batch_size": 128, "threads_per_actor": 1},
        "old": {"name": "old", "classes": "first_half",
                "source": {"kind": "embeddings", "train": str(sets["train"]), "test": str(sets["test"])}},
        "new": [{"name": "bct", "method": "bct"},  # class means as its old classifier
                {"name": "lce_fwd", "method": "lce_forward", "transform": small}],  # old features from the set
        "score": {"pairs": "counterparts"},
    })
    result = run_pipeline(cfg)
    table = pd.read_parquet(result.report_dir / "report.parquet")
    pairs = set(zip(table.query_model, table.gallery_model))
    assert {("old", "old"), ("bct", "old"), ("lce_fwd", "old.t12.lce_fwd")} <= pairs
    old_card = read_card(tmp_path / "run" / "models" / "old")
    assert old_card.kind == "imported" and old_card.embedding_dim == 12
    old_test = read_embeddings(tmp_path / "run" / "embeddings" / "old" / "test")
    team = pq.read_table(sets["test"])
    np.testing.assert_array_equal(old_test.vectors, np.array(team.column("embedding").to_pylist(), dtype=np.float32))
    forward = read_card(tmp_path / "run" / "models" / "lce_fwd")
    assert forward.old_model_dir == str(tmp_path / "run" / "models" / "old")
    assert Path(forward.old_features) == tmp_path / "run" / "embeddings" / "old" / "train"


def test_a_timm_new_model_trains_from_a_weights_file_at_its_declared_input(tmp_path, dataset, ray_cluster, caplog):
    import timm

    start = timm.create_model("resnet10t", num_classes=3).state_dict()
    torch.save(start, tmp_path / "start.pth")
    config = tmp_path / "new.yaml"
    config.write_text(yaml.safe_dump({
        "name": "new", "method": "independent", "epochs": 1, "batch_size": 32, "cpus_per_worker": 1,
        "data_fraction": 0.1, "lr": 1e-9,  # a step this small leaves the weights where they started
        "model": {"architecture": "timm/resnet10t", "embedding_dim": 16, "pretrained_file": str(tmp_path / "start.pth"),
                  "input": RGB32.model_dump()}}))
    code, logged = run_job("train", "--config", config, "--dataset", dataset, "--out", tmp_path / "new",
                           "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--storage-path", tmp_path / "ray",
                           caplog=caplog)
    assert code == 0, logged
    card = read_card(tmp_path / "new")
    assert card.preprocessing == RGB32 and card.model.architecture == "timm/resnet10t"
    trained = torch.load(tmp_path / "new" / "model.pt", weights_only=True)
    for key, value in start.items():
        if not key.startswith("fc.") and value.is_floating_point() and "running" not in key:
            torch.testing.assert_close(trained[f"embedder.backbone.{key}"], value, atol=1e-5, rtol=0)
