"""Old models from outside: TorchScript, ONNX and timm files exported here from torch models give
the torch models' embeddings; a file that does not match what the config declares is refused,
naming it."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from torch import nn

from pipeline.config import ImportedModelConfig, ModelConfig, Preprocessing
from pipeline.data.preprocess import model_input
from pipeline.model.artifacts import write_initial_model
from pipeline.model.card import ArtifactError, ImportedCard, read_card
from pipeline.model.encoders import import_model, load_encoder, old_classifier, old_forward_module

RGB32 = Preprocessing(mode="RGB", input_size=32, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
CLASSES = ["a", "b", "c"]


def _network() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                         nn.Flatten(), nn.Linear(32, 16)).eval()


def _pixels(count: int = 5, shape: tuple[int, ...] = RGB32.shape) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (count, *shape), dtype=np.uint8)


def _expected(network: nn.Module, pixels: np.ndarray, preprocessing: Preprocessing = RGB32) -> np.ndarray:
    with torch.no_grad():
        return network(model_input(pixels, preprocessing)).numpy()


def _imported(tmp_path, source: dict) -> tuple:
    folder = import_model(ImportedModelConfig(name="old", source=source), CLASSES, tmp_path / "old")
    return load_encoder(folder)


def test_a_torchscript_file_gives_the_torch_models_embeddings(tmp_path):
    network = _network()
    torch.jit.save(torch.jit.trace(network, torch.zeros(2, *RGB32.shape)), tmp_path / "exported.pt")
    encoder, card = _imported(tmp_path, {"kind": "torchscript", "file": str(tmp_path / "exported.pt"),
                                         "preprocessing": RGB32.model_dump()})
    assert isinstance(card, ImportedCard) and card.embedding_dim == 16 and card.classes == CLASSES
    np.testing.assert_allclose(encoder(_pixels()), _expected(network, _pixels()), atol=1e-5)


def test_an_onnx_file_gives_the_torch_models_embeddings(tmp_path):
    network = _network()
    torch.onnx.export(network, (torch.zeros(2, *RGB32.shape),), tmp_path / "exported.onnx", input_names=["images"],
                      dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True)
    encoder, card = _imported(tmp_path, {"kind": "onnx", "file": str(tmp_path / "exported.onnx"),
                                         "preprocessing": RGB32.model_dump()})
    assert card.embedding_dim == 16
    np.testing.assert_allclose(encoder(_pixels()), _expected(network, _pixels()), atol=1e-5)


def test_a_timm_architecture_with_a_weights_file_gives_the_networks_pooled_features(tmp_path):
    trained = timm.create_model("resnet10t", num_classes=7).eval()  # a classifier the import leaves out
    torch.save(trained.state_dict(), tmp_path / "resnet10t.pth")
    encoder, card = _imported(tmp_path, {"kind": "timm", "architecture": "resnet10t",
                                         "weights_file": str(tmp_path / "resnet10t.pth"),
                                         "preprocessing": RGB32.model_dump()})
    trained.reset_classifier(0)
    assert card.embedding_dim == trained.num_features
    np.testing.assert_allclose(encoder(_pixels(2)), _expected(trained, _pixels(2)), atol=1e-5)


def test_timm_data_config_is_the_preprocessing_when_none_is_declared(tmp_path):
    torch.save(timm.create_model("resnet10t").state_dict(), tmp_path / "w.pth")
    folder = import_model(ImportedModelConfig(name="old", source={"kind": "timm", "architecture": "resnet10t",
                                                                  "weights_file": str(tmp_path / "w.pth")}),
                          CLASSES, tmp_path / "old")
    preprocessing = read_card(folder).preprocessing
    assert (preprocessing.mode, preprocessing.input_size, preprocessing.resize) == ("RGB", 176, 201)
    assert preprocessing.interpolation == "bicubic" and preprocessing.mean == pytest.approx([0.485, 0.456, 0.406])


def test_importing_the_same_file_again_keeps_its_id_and_leaves_the_folder(tmp_path):
    torch.jit.save(torch.jit.trace(_network(), torch.zeros(2, *RGB32.shape)), tmp_path / "m.pt")
    source = {"kind": "torchscript", "file": str(tmp_path / "m.pt"), "preprocessing": RGB32.model_dump()}
    first = read_card(import_model(ImportedModelConfig(name="old", source=source), CLASSES, tmp_path / "old"))
    written = (tmp_path / "old" / "card.json").stat().st_mtime_ns
    again = read_card(import_model(ImportedModelConfig(name="old", source=source), CLASSES, tmp_path / "old"))
    assert again.id == first.id and (tmp_path / "old" / "card.json").stat().st_mtime_ns == written


def test_an_onnx_input_of_another_shape_is_refused_naming_the_file(tmp_path):
    torch.onnx.export(_network(), (torch.zeros(1, *RGB32.shape),), tmp_path / "fixed.onnx", dynamo=True,
                      external_data=False)  # one file; the other tests export with external data
    gray28 = Preprocessing.project("L", 28)
    with pytest.raises(ArtifactError, match=r"fixed\.onnx: its input is \[1, 3, 32, 32\].*\[N, 1, 28, 28\]"):
        _imported(tmp_path, {"kind": "onnx", "file": str(tmp_path / "fixed.onnx"),
                             "preprocessing": gray28.model_dump()})


def test_an_onnx_file_of_a_fixed_batch_size_or_not_onnx_at_all_is_refused_naming_the_file(tmp_path):
    torch.onnx.export(_network(), (torch.zeros(1, *RGB32.shape),), tmp_path / "one.onnx", dynamo=True,
                      external_data=False)
    with pytest.raises(ArtifactError, match=r"one\.onnx: its batch axis is fixed at 1 .*dynamic batch axis"):
        _imported(tmp_path, {"kind": "onnx", "file": str(tmp_path / "one.onnx"), "preprocessing": RGB32.model_dump()})
    (tmp_path / "text.onnx").write_text("not a model")
    with pytest.raises(ArtifactError, match=r"text\.onnx: not an ONNX file"):
        _imported(tmp_path, {"kind": "onnx", "file": str(tmp_path / "text.onnx"), "preprocessing": RGB32.model_dump()})


def test_a_torchscript_model_that_does_not_take_the_declared_input_is_refused_naming_the_file(tmp_path):
    torch.jit.save(torch.jit.trace(_network(), torch.zeros(2, *RGB32.shape)), tmp_path / "rgb.pt")
    with pytest.raises(ArtifactError, match=r"rgb\.pt: the model does not take the declared input \[N, 1, 28, 28\]"):
        _imported(tmp_path, {"kind": "torchscript", "file": str(tmp_path / "rgb.pt"),
                             "preprocessing": Preprocessing.project("L", 28).model_dump()})


def test_a_weights_file_of_another_architecture_is_refused_naming_it(tmp_path):
    torch.save(timm.create_model("resnet18").state_dict(), tmp_path / "resnet18.pth")
    with pytest.raises(ArtifactError, match=r"resnet18\.pth: weights do not match timm architecture 'resnet10t'"):
        _imported(tmp_path, {"kind": "timm", "architecture": "resnet10t",
                             "weights_file": str(tmp_path / "resnet18.pth"), "preprocessing": RGB32.model_dump()})


def test_a_missing_file_is_refused_naming_it(tmp_path):
    with pytest.raises(ArtifactError, match=r"nowhere\.onnx: onnx model file not found"):
        _imported(tmp_path, {"kind": "onnx", "file": str(tmp_path / "nowhere.onnx"),
                             "preprocessing": RGB32.model_dump()})


def test_a_project_artifact_is_an_encoder_too(tmp_path):
    folder = write_initial_model(tmp_path / "m", "m", ModelConfig(embedding_dim=8), CLASSES)
    encoder, card = load_encoder(folder)
    pixels = _pixels(3, (1, 28, 28))
    from pipeline.model.artifacts import load_model

    with torch.no_grad():
        expected = load_model(folder)[0].embedder(torch.from_numpy(pixels.astype(np.float32) / 127.5 - 1)).numpy()
    np.testing.assert_array_equal(encoder(pixels), expected)  # the [-1, 1] input the project always trained on


def test_l2_refuses_an_old_model_it_cannot_run_on_the_new_models_input(tmp_path):
    torch.onnx.export(_network(), (torch.zeros(2, *RGB32.shape),), tmp_path / "m.onnx", dynamo=True,
                      dynamic_shapes=({0: torch.export.Dim("batch")},))
    onnx = import_model(ImportedModelConfig(name="old", source={"kind": "onnx", "file": str(tmp_path / "m.onnx"),
                                                                "preprocessing": RGB32.model_dump()}),
                        CLASSES, tmp_path / "onnx")
    with pytest.raises(ArtifactError, match="method l2 runs the old model on every training batch.*ONNX"):
        old_forward_module(onnx, RGB32)
    torch.jit.save(torch.jit.trace(_network(), torch.zeros(2, *RGB32.shape)), tmp_path / "m.pt")
    script = import_model(ImportedModelConfig(name="old", source={"kind": "torchscript", "file": str(tmp_path / "m.pt"),
                                                                  "preprocessing": RGB32.model_dump()}),
                          CLASSES, tmp_path / "ts")
    assert isinstance(old_forward_module(script, RGB32), nn.Module)
    with pytest.raises(ArtifactError, match="the two differ"):
        old_forward_module(script, Preprocessing.project("RGB", 32))


def test_an_imported_classifier_must_have_a_row_per_class(tmp_path):
    np.save(tmp_path / "rows.npy", np.ones((2, 4), dtype=np.float32))
    train = tmp_path / "train.parquet"
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": ["x"], "embedding": [[0.0, 1.0, 0.0, 0.0]]}), train)
    folder = import_model(ImportedModelConfig(name="old", source={"kind": "embeddings", "train": str(train),
                                                                  "test": str(train),
                                                                  "classifier": str(tmp_path / "rows.npy")}),
                          CLASSES, tmp_path / "old")
    (tmp_path / "rows.npy").unlink()  # the artifact holds its own copy
    with pytest.raises(ArtifactError, match=r"classifier\.npy: classifier rows of shape \[2, 4\], expected \[3 "
                                            r"classes, 4\]"):
        old_classifier(folder)
    with pytest.raises(ArtifactError, match="known only by its embeddings"):
        load_encoder(folder)
