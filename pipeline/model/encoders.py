"""Models that give embeddings, whoever made them, behind one encoder.

An old model need not be one this project trained. ``import_model`` turns a team's model into an
artifact folder with an ``ImportedCard``: a TorchScript file, an ONNX file (run with onnxruntime)
or a timm architecture with its weights file, each copied into the folder, checked on an input
of its declared preprocessing and measured for its embedding dimension; or a model known only by
its embeddings (Parquet files of the training and the scored split, which
``pipeline.encode.split`` converts to this project's embeddings contract). ``load_encoder`` gives
the same ``Encoder`` for every kind that can see images, a project artifact included, so that
encoding, the statistics and a CMC fit never ask what made a model.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline.atomic import write_atomic
from pipeline.config import (
    EmbeddingsSource,
    HeadConfig,
    ImportedModelConfig,
    ModelSource,
    OnnxSource,
    Preprocessing,
    TimmSource,
    TorchScriptSource,
)
from pipeline.data.external import embeddings_files, external_dim
from pipeline.data.preprocess import model_input
from pipeline.model.artifacts import load_model
from pipeline.model.card import (
    CARD_FILE,
    ArtifactError,
    EncoderCard,
    ImportedCard,
    ModelCard,
    error_summary,
    read_card,
    read_encoder_card,
    write_card,
)
from pipeline.model.networks import timm_network, timm_preprocessing

CLASSIFIER_FILE = "classifier.npy"  # an embeddings-only model's classifier rows, copied into its artifact


def source_file(source: TorchScriptSource | OnnxSource | TimmSource) -> str:
    """The name of an imported model's file inside its artifact folder (a timm weights file keeps
    its suffix, which tells timm's loader safetensors from a torch file)."""
    if isinstance(source, TimmSource):
        return f"weights{Path(source.weights_file).suffix}"
    return {"torchscript": "model.ts", "onnx": "model.onnx"}[source.kind]


@dataclass(frozen=True)
class Encoder:
    """uint8 pixels [N, C, S, S] of ``preprocessing``'s shape in, unnormalised float32 embeddings [N, d] out."""

    embed: Callable[[torch.Tensor], np.ndarray]  # the model's float input -> embeddings
    preprocessing: Preprocessing
    dim: int

    def __call__(self, pixels: np.ndarray | torch.Tensor) -> np.ndarray:
        return self.embed(model_input(pixels, self.preprocessing))


def torch_embed(module: nn.Module, device: torch.device) -> Callable[[torch.Tensor], np.ndarray]:
    module = module.eval().to(device)

    def embed(images: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            return module(images.to(device)).float().cpu().numpy()

    return embed


def onnx_session(path: Path, threads: int = 1):
    """An onnxruntime CPU session of the ONNX file at ``path``, or an error naming the file."""
    import onnxruntime  # only an ONNX model's encoder needs it

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    try:
        return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own Fail / InvalidGraph types
        raise ArtifactError(f"{path}: not a model onnxruntime can load ({type(error).__name__}: {error})") from None


def onnx_embed(path: Path, threads: int = 1) -> Callable[[torch.Tensor], np.ndarray]:
    """An ONNX file's first output for its one input, on onnxruntime's CPU provider."""
    session = onnx_session(path, threads)
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ArtifactError(f"{path}: an ONNX encoder takes one input (images), this one takes "
                            f"{[i.name for i in inputs]}")
    name = inputs[0].name
    return lambda images: np.asarray(session.run(None, {name: images.numpy()})[0], dtype=np.float32)


def load_torchscript(path: Path) -> nn.Module:
    try:
        return torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError) as error:
        raise ArtifactError(f"{path}: not a TorchScript file ({error_summary(error)})") from None


def build_timm(source: TimmSource, weights: Path) -> nn.Module:
    """An imported timm model: its architecture with the weights file, strictly."""
    channels = source.preprocessing.channels if source.preprocessing is not None else 3
    return timm_network(source.architecture, channels, weights)


def _embed_from(source: TorchScriptSource | OnnxSource | TimmSource, path: Path, device: torch.device,
                threads: int) -> Callable[[torch.Tensor], np.ndarray]:
    """How the model file at ``path`` embeds float images."""
    if isinstance(source, TorchScriptSource):
        return torch_embed(load_torchscript(path), device)
    if isinstance(source, OnnxSource):
        return onnx_embed(path, threads)
    return torch_embed(build_timm(source, path), device)


def _embed_of(source: ModelSource, folder: Path, device: torch.device,
              threads: int) -> Callable[[torch.Tensor], np.ndarray]:
    """How the imported model in ``folder`` embeds float images."""
    if isinstance(source, EmbeddingsSource):
        raise ArtifactError(f"{folder}: the model is known only by its embeddings (files {source.train}, "
                            f"{source.test}); nothing here can run it on images")
    return _embed_from(source, folder / source_file(source), device, threads)


def load_encoder(folder: str | Path, device: torch.device | None = None,
                 threads: int = 1) -> tuple[Encoder, EncoderCard]:
    """The encoder of a model artifact (trained here or imported) and its card; an imported
    model known only by its embeddings has none (``ArtifactError`` saying so)."""
    folder, device = Path(folder), device or torch.device("cpu")
    card = read_encoder_card(folder)
    if isinstance(card, ModelCard):
        embedder = load_model(folder)[0].embedder
        return Encoder(torch_embed(embedder, device), card.preprocessing, card.embedding_dim), card
    return Encoder(_embed_of(card.source, folder, device, threads), card.preprocessing, card.embedding_dim), card


def _measured_dim(embed: Callable[[torch.Tensor], np.ndarray], preprocessing: Preprocessing, file: Path) -> int:
    """The embedding dimension of a model on two images of its declared input, or an error
    naming its file when that input is not what it takes."""
    probe = torch.zeros((2, *preprocessing.shape), dtype=torch.uint8)
    try:
        out = embed(model_input(probe, preprocessing))
    except Exception as error:  # torch, onnxruntime and timm raise their own types
        raise ArtifactError(f"{file}: the model does not take the declared input [N, "
                            f"{', '.join(map(str, preprocessing.shape))}] (preprocessing mode {preprocessing.mode}, "
                            f"input_size {preprocessing.input_size}): {error_summary(error)}") from None
    if out.ndim != 2 or out.shape[0] != 2:
        raise ArtifactError(f"{file}: expected embeddings [N, d] for a batch of 2 images, got shape {list(out.shape)}")
    return int(out.shape[1])


def _check_onnx_input(path: Path, preprocessing: Preprocessing) -> None:
    """An ONNX input of fixed sizes other than the declared preprocessing's, or of a fixed batch
    size (the encoders batch their images), refused before any run."""
    shape = onnx_session(path).get_inputs()[0].shape
    declared = preprocessing.shape
    fixed = [(axis, size) for axis, size in enumerate(shape[1:], start=1) if isinstance(size, int)]
    if len(shape) != 4 or any(size != declared[axis - 1] for axis, size in fixed):
        raise ArtifactError(f"{path}: its input is {shape}, the declared preprocessing gives [N, "
                            f"{', '.join(map(str, declared))}] (mode {preprocessing.mode}, input_size "
                            f"{preprocessing.input_size}); fix the config's preprocessing or export the model again")
    if isinstance(shape[0], int):
        raise ArtifactError(f"{path}: its batch axis is fixed at {shape[0]} (input {shape}); export it with a dynamic "
                            f"batch axis (torch.onnx.export's dynamic_axes or dynamic_shapes)")


def import_model(cfg: ImportedModelConfig, classes: list[str], folder: str | Path) -> Path:
    """``cfg``'s model as an artifact folder with an ``ImportedCard`` over ``classes`` (the old
    model's label map): its file copied in and checked, or its embeddings files named. The id
    is a hash of the files, so that importing the same model again keeps its id (and every
    embeddings set encoded with it); a folder already holding that import is left as it is."""
    folder, source = Path(folder), cfg.source
    if isinstance(source, EmbeddingsSource):
        classifier = Path(source.classifier).resolve() if source.classifier else None
        if classifier is not None and not classifier.is_file():
            raise ArtifactError(f"{source.classifier}: classifier rows file not found (old.source.classifier)")
        source = source.model_copy(update={"train": str(Path(source.train).resolve()),
                                           "test": str(Path(source.test).resolve()),
                                           "classifier": str(classifier) if classifier else None})
        model_id = _model_id(cfg.name, source, [classifier] if classifier else [],
                             embeddings_files(source.train) + embeddings_files(source.test))
    else:
        given = Path(source.weights_file if isinstance(source, TimmSource) else source.file)
        if not given.is_file():
            raise ArtifactError(f"{given}: {source.kind} model file not found (old.source)")
        files = [given] + (_onnx_data_files(given) if isinstance(source, OnnxSource) else [])
        model_id = _model_id(cfg.name, source, files)
    if (folder / CARD_FILE).is_file():
        existing = read_card(folder)
        if isinstance(existing, ImportedCard) and existing.id == model_id and existing.classes == classes:
            return folder
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(source, EmbeddingsSource):
        dims = {external_dim(source.train), external_dim(source.test)}
        if len(dims) != 1:
            raise ArtifactError(f"{source.train} and {source.test}: embeddings of different dimensions {sorted(dims)}")
        preprocessing, dim = None, dims.pop()
        if classifier is not None:  # small: copied in, so that the artifact holds it (the sets may be large)
            write_atomic(folder / CLASSIFIER_FILE, lambda temporary: shutil.copyfile(classifier, temporary))
    else:  # checked on the given file, so that an error names it; copied in once it passed
        if isinstance(source, OnnxSource):
            _check_onnx_input(given, source.preprocessing)
        preprocessing = source.preprocessing
        if isinstance(source, TimmSource) and preprocessing is None:
            preprocessing = timm_preprocessing(source.architecture)
        dim = _measured_dim(_embed_from(source, given, torch.device("cpu"), 1), preprocessing, given)
        for file in files:  # an ONNX file's external data keeps the name the model refers to
            copied = folder / (source_file(source) if file == given else file.relative_to(given.parent))
            write_atomic(copied, lambda temporary, file=file: shutil.copyfile(file, temporary))
    write_card(folder, ImportedCard(id=model_id, name=cfg.name, classes=classes, source=source, embedding_dim=dim,
                                    preprocessing=preprocessing))
    return folder


def old_classifier(folder: str | Path) -> tuple[torch.Tensor | None, HeadConfig | None]:
    """A model's classifier rows over its classes and its head's config: a project model's head,
    an imported model's ``classifier`` file (rows in the order of its classes), else none."""
    card = read_encoder_card(folder)
    if isinstance(card, ModelCard):
        return load_model(folder)[0].head.weight.detach(), card.model.head
    if getattr(card.source, "classifier", None) is None:
        return None, None
    file = Path(folder) / CLASSIFIER_FILE
    try:
        rows = torch.from_numpy(np.load(file, allow_pickle=False)).float()
    except (OSError, ValueError) as error:
        raise ArtifactError(f"{file}: cannot read the classifier rows ({error})") from None
    if tuple(rows.shape) != (len(card.classes), card.embedding_dim):
        raise ArtifactError(f"{file}: classifier rows of shape {list(rows.shape)}, expected [{len(card.classes)} "
                            f"classes, {card.embedding_dim}] in the order of the model's classes")
    return rows, None


def old_forward_module(folder: str | Path, preprocessing: Preprocessing | None) -> nn.Module:
    """The old model as a torch module on the new model's input (L2's forward pass on every
    batch): a project model, or an imported TorchScript or timm one, that reads the same input
    as the new model (``preprocessing``); any other is refused, saying why."""
    folder = Path(folder)
    card = read_encoder_card(folder)
    if isinstance(card, ImportedCard) and (card.preprocessing is None or isinstance(card.source, OnnxSource)):
        what = "known only by its embeddings" if card.preprocessing is None else "an ONNX file (not a torch module)"
        raise ArtifactError(f"{folder}: method l2 runs the old model on every training batch, and this old model is "
                            f"{what}; LCE and BCT need only its embeddings")
    if preprocessing is None or card.preprocessing != preprocessing:
        raise ArtifactError(f"{folder}: method l2 runs the old model on the new model's input, and the two differ "
                            f"(old {card.preprocessing}, new {preprocessing})")
    if isinstance(card, ModelCard):
        return load_model(folder)[0].embedder
    path = folder / source_file(card.source)
    return load_torchscript(path) if isinstance(card.source, TorchScriptSource) else build_timm(card.source, path)


def _onnx_data_files(path: Path) -> list[Path]:
    """The external data files an ONNX model's initializers refer to (``torch.onnx.export``
    writes its weights to ``<file>.data`` by default), each in the model's folder."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # onnx raises protobuf's DecodeError and its own types
        raise ArtifactError(f"{path}: not an ONNX file ({type(error).__name__}: {error})") from None
    names = sorted({ExternalDataInfo(tensor).location for tensor in model.graph.initializer
                    if uses_external_data(tensor)})
    outside = [name for name in names if not (path.parent / name).resolve().is_relative_to(path.parent.resolve())]
    if outside:
        raise ArtifactError(f"{path}: its external data {outside} lies outside its folder; keep the data files beside "
                            f"the model")
    missing = [name for name in names if not (path.parent / name).is_file()]
    if missing:
        raise ArtifactError(f"{path}: its external data files {missing} are not found beside it")
    return [path.parent / name for name in names]


def _model_id(name: str, source: ModelSource, read: list[Path], stamped: list[Path] = ()) -> str:
    """An imported model's id: a hash of its source's settings (kind, preprocessing,
    architecture), the bytes of the files in ``read`` and the paths, sizes and modification times
    of those in ``stamped`` (embeddings sets may be far larger than a hash should read), so that
    importing the same model again keeps its id, and another file or setting gets a new one."""
    digest = hashlib.blake2b(digest_size=4)
    digest.update(json.dumps(source.model_dump(exclude={"file", "weights_file", "train", "test", "classifier"}),
                             sort_keys=True).encode())
    for file in read:
        with open(file, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    for file in stamped:
        digest.update(f"{file.resolve()}:{file.stat().st_size}:{file.stat().st_mtime_ns}".encode())
    return f"{name}-{digest.hexdigest()}"
