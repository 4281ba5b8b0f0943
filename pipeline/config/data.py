"""The schemas of data: the dataset's source, imported models and encoding (``pipeline.data``, ``pipeline.encode``)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from pipeline.config.base import NAME_PATTERN, Strict
from pipeline.config.model import Preprocessing


class TorchScriptSource(Strict):
    """A TorchScript file (``torch.jit.save``): float images [N, C, S, S] in, embeddings [N, d] out."""

    kind: Literal["torchscript"]
    file: str
    preprocessing: Preprocessing


class OnnxSource(Strict):
    """An ONNX file run with onnxruntime on the CPU: one input [N, C, S, S], its first output the embeddings."""

    kind: Literal["onnx"]
    file: str
    preprocessing: Preprocessing


class TimmSource(Strict):
    """A timm architecture with a weights file, its pooled features (``num_classes=0``) the embeddings."""

    kind: Literal["timm"]
    architecture: str
    weights_file: str
    preprocessing: Preprocessing | None = Field(None, description="None: timm's data config of the architecture")


class EmbeddingsSource(Strict):
    """A model known only by its embeddings: Parquet files (columns ``id``, ``embedding``, optional
    ``label``) of the dataset's training split and of its scored split, written by the team's own
    encoder."""

    kind: Literal["embeddings"]
    train: str = Field(description="file or folder: the training split's embeddings (statistics, forward)")
    test: str = Field(description="file or folder: the scored split's embeddings (queries and gallery)")
    classifier: str | None = Field(None, description="a .npy of its classifier rows [classes, d] in the order of "
                                                     "`classes` (BCT); none: the class means stand in")


ModelSource = Annotated[TorchScriptSource | OnnxSource | TimmSource | EmbeddingsSource, Field(discriminator="kind")]


class ImportedModelConfig(Strict):
    """An old model this project did not train (``pipeline.model.encoders.import_model``)."""

    name: str = Field(pattern=NAME_PATTERN)
    source: ModelSource
    classes: Literal["all", "first_half"] | list[str] = Field(
        "all", description="the dataset's classes it was trained on: the seen / unseen query subsets")


class DataConfig(Strict):
    source: str = "/usr/share/datasets/fashion-mnist"
    root: str = Field("data/fashion-mnist", description="where the ingested Parquet dataset lives")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="for sources with no test split of their own")
    image_size: int | None = Field(None, gt=0, description="None: the source's own size, at most 64")
    rows_per_file: int = Field(10_000, gt=0)
    on_bad_rows: Literal["error", "skip"] = Field("error", description="a row whose image does not decode or whose "
                                                  "label is missing or unknown: stop naming it, or skip and list it")


class EncodeConfig(Strict):
    """How ``pipeline.encode.split.encode_split`` lays out its Ray Data job."""

    batch_size: int = Field(512, gt=0)
    num_actors: int = Field(1, gt=0)
    cpus_per_actor: float = Field(0.5, gt=0, description="CPUs each actor reserves; on CPUs exactly 1 (what a "
                                  "decoding task reserves) makes the actors decode their files themselves, which "
                                  "then overlaps none of their inference (pipeline.encode.split.encode_split)")
    threads_per_actor: int = Field(2, gt=0, description="torch threads in each actor")
    use_gpu: bool | None = Field(None, description="None: one GPU per actor when the cluster has GPUs at the start; "
                                 "true asks for them (an autoscaler then adds GPU nodes)")
    on_bad_rows: Literal["error", "skip"] = Field("error", description="as data.on_bad_rows, for the rows encoded")
