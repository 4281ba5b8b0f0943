"""Typed, validated experiment configs.

A YAML file states only what differs from the defaults below. Loading refuses an unknown key,
a wrong type or an out-of-range value with one message that names the file and the key
(``ConfigError``), so a typo never silently falls back to a default.
"""

from __future__ import annotations

import copy
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PositiveInt,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

if TYPE_CHECKING:
    from pipeline.compat.methods import Method


class ConfigError(ValueError):
    """A config file or dict that does not match its schema."""


class Strict(BaseModel):
    """A frozen schema that refuses unknown keys."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class HeadConfig(Strict):
    """Classification head on top of the embedding (docs/design.md, 'Losses of compatible training')."""

    kind: Literal["softmax", "cosface", "arcface"] = "cosface"
    scale: float = Field(16.0, gt=0, description="logit scale s of the margin heads")
    margin: float = Field(0.1, ge=0, description="additive (CosFace) or angular (ArcFace) margin m")


class Preprocessing(Strict):
    """A model's input (``pipeline.data.preprocess``): ``mode`` images of ``input_size`` x
    ``input_size``, normalised by ``mean`` and ``std`` (per channel, on pixels in [0, 1])."""

    mode: Literal["L", "RGB"]
    input_size: int = Field(gt=0, description="the square side the model reads")
    resize: int | None = Field(None, gt=0, description="the shorter side before the center crop; None: input_size")
    mean: list[float] = Field(min_length=1)
    std: list[float] = Field(min_length=1)
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"

    @model_validator(mode="after")
    def _per_channel(self) -> "Preprocessing":
        for key in ("mean", "std"):
            if len(getattr(self, key)) != self.channels:
                raise ValueError(f"{key}: {len(getattr(self, key))} values for the {self.channels} channel(s) of "
                                 f"mode {self.mode}")
        if any(value <= 0 for value in self.std):
            raise ValueError(f"std: every value must be positive (got {self.std})")
        if self.resize is not None and self.resize < self.input_size:
            raise ValueError(f"resize {self.resize} is smaller than the center crop's input_size {self.input_size}")
        return self

    @property
    def channels(self) -> int:
        return 1 if self.mode == "L" else 3

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.channels, self.input_size, self.input_size

    @classmethod
    def project(cls, mode: str, image_size: int) -> "Preprocessing":
        """The input of a model this project trains: the dataset's mode and size, scaled to [-1, 1]."""
        channels = 1 if mode == "L" else 3
        return cls(mode=mode, input_size=image_size, mean=[0.5] * channels, std=[0.5] * channels)


BUILT_IN_ARCHITECTURES = ("mlp", "small_cnn", "resnet18", "resnet50")
TIMM_PREFIX = "timm/"


class ModelConfig(Strict):
    architecture: str = Field("small_cnn", description=f"one of {', '.join(BUILT_IN_ARCHITECTURES)}, or "
                                                       f"{TIMM_PREFIX}<name>: any timm architecture (pooled features)")
    embedding_dim: int = Field(128, gt=0)
    stem_stride: Literal[1, 2, 4] = Field(1, description="ResNets: 1 = 3x3 conv, 2 = strided 3x3 conv, "
                                          "4 = strided conv + max-pool (CPU budgets); ignored by small_cnn and mlp")
    head: HeadConfig = HeadConfig()
    pretrained_file: str | None = Field(None, description="timm: a local weights file to start from (its classifier "
                                                          "left out); none: from scratch")
    input: Preprocessing | None = Field(None, description="what the model reads; none: the dataset's mode and size "
                                                          "scaled to [-1, 1] (built-ins), timm's data config (timm)")

    @field_validator("architecture")
    @classmethod
    def _known_architecture(cls, architecture: str) -> str:
        if architecture in BUILT_IN_ARCHITECTURES or (architecture.startswith(TIMM_PREFIX)
                                                      and len(architecture) > len(TIMM_PREFIX)):
            return architecture
        raise ValueError(f"architecture {architecture!r}: expected one of {list(BUILT_IN_ARCHITECTURES)} or "
                         f"'{TIMM_PREFIX}<name>' (a timm architecture)")

    @model_validator(mode="after")
    def _pretrained_is_timm(self) -> "ModelConfig":
        if self.pretrained_file is not None and not self.timm_name:
            raise ValueError(f"pretrained_file: only a timm architecture starts from a weights file "
                             f"(architecture {self.architecture!r})")
        return self

    @property
    def timm_name(self) -> str | None:
        """The timm architecture's name, None for a built-in one."""
        return self.architecture.removeprefix(TIMM_PREFIX) if self.architecture.startswith(TIMM_PREFIX) else None


class TransformConfig(Strict):
    """Size of a learned transformation between spaces: K blocks, P paths, hidden width h."""

    blocks: int = Field(1, ge=0, description="K; 0 is the identity (equal dimensions only)")
    paths: int = Field(1, ge=1, description="P parallel paths per block")
    hidden: int = Field(256, gt=0, description="h, the hidden width of each path")


class RetrievalSide(Strict):
    """One transformation's retrieval term (``retrieval_cmc``): its softmax scale and the weight of
    the point-wise regression kept beside it."""

    scale: float = Field(gt=0, description="s of the softmax over the gallery's cosines")
    lambda_regression: float = Field(ge=0, description="weight of ||T(x) - y||^2 on the same image, which keeps "
                                                       "which image lies near which")


class RetrievalConfig(Strict):
    """``retrieval_cmc``: each transformation trained to make the other model's gallery retrieve the
    same class (``pipeline.compat.losses.retrieval_loss``), against a sample of the fit's rows.

    T21 (backward) moves new queries among the old gallery's fixed features; T12 (forward) moves
    the old gallery's items among the new queries' fixed features. Measured on stored features of
    the five scenarios (one seed, test split): T21 wants a flatter softmax (s 8) and a stronger
    regression (0.3) than T12 (s 16, 0.1), whose mapped items it may move freely; README,
    'Cross-model compatibility'."""

    memory: int = Field(4096, gt=0, description="rows of the fit (its shard) each step searches, with the batch's own")
    backward: RetrievalSide = RetrievalSide(scale=8.0, lambda_regression=0.3)
    forward: RetrievalSide = RetrievalSide(scale=16.0, lambda_regression=0.1)


class CompatConfig(Strict):
    """Weights and options of the compatibility terms.

    ``lambda_align`` multiplies the alignment loss reduced as the mean over classes of the
    squared distance between unit vectors (``2 - 2 cos``, whatever the dimension ``d``). The
    public LCE code takes the mean over the ``C x d`` entries instead, ``1/d`` of this
    reduction, with lambda 100: that is ``lambda_align = 100 / d`` here (0.78 at d = 128, 1.56
    at d = 64), not a constant.
    ``lambda_boundary`` multiplies the mean over samples of the angular hinge (radians).
    """

    lambda_align: float = Field(1.0, ge=0)
    lambda_boundary: float = Field(1.0, ge=0)
    lambda_influence: float = Field(1.0, ge=0, description="weight of a cross-entropy through another space's "
                                                           "classifier: BCT's influence loss, lce_rbt_cmc's T12 one")
    class_scale: float = Field(16.0, gt=0, description="lce_rbt_cmc: s of T12's cosine classifier of the new "
                                                       "space's class centers")
    lambda_regression: float = Field(1.0, ge=0, description="weight of the point-wise regression: L2's, the CMC "
                                                            "baseline's and LCE's (target_pull)")
    compactness_margin: float = Field(0.0, ge=0, description="m in radians: boundary shrinks to b - m (at least 0, "
                                                         "the center: a warning names the classes it reaches)")
    new_space_margin: float | None = Field(None, ge=0, description="m of the boundaries in model 2's space (T12's "
                                           "targets: the forward manner, CMC's T12); None: compactness_margin")
    target_pull: float | None = Field(
        None, ge=0, le=1, description="LCE's point-wise term (methods marked pulls_features): the batch's features in "
                                      "the old space (direct: f2, else T21(f2)) regress onto their old features moved "
                                      "this share of the way to their class centers, weight lambda_regression; None: "
                                      "no such term")
    pull_classes: Literal["all", "unseen"] = Field(
        "all", description="the classes whose samples the point-wise term covers: all, or those the old model was "
                           "not trained on (the class-level terms alone keep the others)")
    centers: Literal["mean", "classifier"] = Field(
        "mean", description="c_j: the normalised mean of the old model's normalised features of class j; or, for the "
                            "classes the old model was trained on, its normalised classifier row (the others keep the "
                            "mean); boundaries are measured around the chosen centers")
    boundary: Literal["max", "quantile", "iqr"] = "quantile"
    boundary_quantile: float = Field(0.95, gt=0, le=1, description="the quantile rule's level, in the old space and "
                                                                   "for the new space's running boundaries (forward)")
    running_momentum: float = Field(0.9, ge=0, lt=1, description="forward: the moving-average momentum per batch of "
                                                                 "the new space's boundary angles")
    old_classes_only: bool = Field(False, description="compatibility terms only over the old model's classes")
    retrieval: RetrievalConfig = RetrievalConfig()

    @property
    def forward_margin(self) -> float:
        """The margin of the boundaries that T12's outputs are held in (model 2's space)."""
        return self.compactness_margin if self.new_space_margin is None else self.new_space_margin


NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class FitConfig(Strict):
    """What every Ray Train fit shares, compatible training and CMC alike: its name, method, seed,
    budget, optimizer and resources (``pipeline.train.driver`` runs both)."""

    method_kind: ClassVar[str]  # the catalogue's kind of its methods: "training" or "CMC"

    name: str = Field(pattern=NAME_PATTERN)
    method: str
    seed: int = 0
    epochs: int = Field(4, gt=0)
    min_steps: int = Field(0, ge=0, description="small datasets: passes per epoch rise until the run has this many steps")
    batch_size: int = Field(128, gt=0, description="global batch: each of the num_workers workers takes "
                                                   "batch_size / num_workers rows a step")
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(5e-4, ge=0)
    num_workers: int = Field(1, gt=0)
    cpus_per_worker: float = Field(2, gt=0)
    use_gpu: bool | None = Field(None, description="None: use GPUs when the cluster has them")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="autocast of the forward pass; auto: bf16 on GPUs that support it, else fp32 "
                            "(fp16 adds a gradient scaler)")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="how Ray places the workers on nodes (SPREAD: one per node where possible)")
    max_failures: int = Field(0, ge=-1, description="worker-group restarts from the last checkpoint after a "
                                                    "worker or node dies (-1: no limit)")

    @model_validator(mode="after")
    def _batch_divides(self) -> "FitConfig":
        if self.batch_size % self.num_workers:
            raise ValueError(f"batch_size {self.batch_size} is not a multiple of num_workers {self.num_workers} "
                             "(the global batch is split evenly over the workers)")
        return self

    @field_validator("method")
    @classmethod
    def _known_method(cls, method: str) -> str:
        """A method of the catalogue of this config's kind. The catalogue is imported here, not at
        the top: it imports torch, which a config should not need until it is validated."""
        from pipeline.compat.methods import Kind, method_named

        method_named(method, Kind(cls.method_kind))
        return method

    @property
    def method_spec(self) -> "Method":
        """The catalogue's entry of ``method``."""
        from pipeline.compat.methods import Kind, method_named

        return method_named(self.method, Kind(self.method_kind))

    @property
    def worker_batch_size(self) -> int:
        return self.batch_size // self.num_workers

    @property
    def reserved_cpus(self) -> float:
        """The CPUs one run holds while it runs: its workers'."""
        return self.num_workers * self.cpus_per_worker


# Fields that schedule a fit without changing what it computes: a rerun may change them and still
# resume the same run (pipeline.train.driver.config_hash).
SCHEDULING_FIELDS = ("max_failures", "placement_strategy", "decode_cpus")


class AugmentConfig(Strict):
    """Train-time augmentation, each image on its own draw (``pipeline.data.preprocess.train_pixels``,
    torchvision.transforms.v2): a random resized crop and a horizontal flip by default."""

    crop_scale: tuple[float, float] = Field((0.25, 1.0), description="RandomResizedCrop's share of the image "
                                                                      "area; (1, 1): no crop, a resize")
    crop_ratio: tuple[float, float] = Field((3 / 4, 4 / 3), description="RandomResizedCrop's aspect ratios")
    flip: bool = Field(True, description="a horizontal flip with probability 0.5")
    color_jitter: float = Field(0.0, ge=0, description="brightness, contrast and saturation jitter strength (0: none)")

    @field_validator("crop_scale", "crop_ratio")
    @classmethod
    def _ordered(cls, bounds: tuple[float, float]) -> tuple[float, float]:
        if not 0 < bounds[0] <= bounds[1]:
            raise ValueError(f"expected 0 < low <= high (got {bounds})")
        return bounds


class TrainConfig(FitConfig):
    """One model's training run (a Ray Train job)."""

    method_kind: ClassVar[str] = "training"
    method: str = Field("independent", description="a training method of the catalogue (pipeline.compat.methods)")
    model: ModelConfig = ModelConfig()
    classes: Literal["all", "first_half"] | list[str] = "all"
    data_fraction: float = Field(1.0, gt=0, le=1)
    min_rows: int = Field(0, ge=0, description="small datasets: data_fraction rises until it keeps about this many "
                                               "training rows of its classes (pipeline.data.dataset.share_with_rows)")
    validation_fraction: float = Field(0.0, ge=0, lt=1, description="share of the training split held out "
                                       "for validation (pipeline.data.dataset.in_validation), the same rows for every model")
    compat: CompatConfig = CompatConfig()
    transform: TransformConfig = TransformConfig()
    ingest: Literal["memory", "stream"] = Field(
        "memory", description="memory: each worker decodes its shard once and holds it; stream: Ray Data reads, "
                              "decodes and augments on CPUs and streams each worker its shard every epoch "
                              "(pipeline.train.stream)")
    augment: AugmentConfig | None = Field(None, description="train-time augmentation (with ingest: stream); {} is a "
                                                            "random resized crop and a flip")
    decode_cpus: float | None = Field(None, ge=0, description="ingest stream: CPUs the fit reserves for its decoding "
                                                              "tasks beside the workers', one task per CPU at once "
                                                              "(default 1; 0: they share the workers' CPUs, two tasks "
                                                              "at once)")

    @model_validator(mode="after")
    def _streamed_only(self) -> "TrainConfig":
        given = {"augment": self.augment is not None, "decode_cpus": self.decode_cpus is not None}
        for key in (key for key, present in given.items() if present):
            if self.ingest != "stream":
                raise ValueError(f"{key}: only the streamed ingest uses it (ingest: stream; augment draws new crops "
                                 "every epoch, decode_cpus reserves the decoding tasks' CPUs)")
        return self

    @property
    def needs_old_model(self) -> bool:
        return self.method_spec.needs_old_model

    @property
    def reserved_cpus(self) -> float:
        """Its workers' CPUs and, streamed, its decoding tasks' (``pipeline.train.stream.decoding_pool``)."""
        return super().reserved_cpus + (self.decoding_cpus if self.ingest == "stream" else 0)

    @property
    def decoding_cpus(self) -> float:
        """What a streamed fit reserves for its decoding tasks."""
        return 1.0 if self.decode_cpus is None else self.decode_cpus

    @property
    def reads_old_features(self) -> bool:
        """Whether its fit reads the old model's features of each batch by id (``Method.reads_old_features``)."""
        return self.method_spec.reads_old_features(self.compat)


class CmcConfig(FitConfig):
    """Cross-model compatibility: ``T12`` and ``T21`` fit between two trained, frozen models.

    ``lce_cmc`` trains each with alignment + boundary in its target space (docs/design.md,
    'Cross-model compatibility'); ``rbt_cmc`` is the point-wise regression baseline ``||T21(f2) - f1||^2``.
    """

    method_kind: ClassVar[str] = "CMC"
    method: str = Field("lce_cmc", description="a CMC method of the catalogue (pipeline.compat.methods)")
    new_model: str = Field(description="name of the trained model 2 (model 1 is the pipeline's old model)")
    transform: TransformConfig = TransformConfig()
    compat: CompatConfig = CompatConfig()
    epochs: int = Field(10, gt=0)
    batch_size: int = Field(512, gt=0, description="global batch of feature rows, split over the workers")
    min_steps: int = Field(200, ge=0, description="passes per epoch rise until the fit has this many steps: on "
                                                  "1,600 rows (30 steps) the transformations underfit")


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
# The tags of each union field's members, which pydantic puts in an error's key path right after
# the field's name (left out of messages: not keys).
UNION_TAGS = {"source": {"torchscript", "onnx", "timm", "embeddings"}, "old": {"trained", "imported"}}


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


class IndexConfig(Strict):
    """How each search finds neighbours: exact (``flat``) or inverted lists (``ivf``, probing
    ``nprobe`` of ``nlist`` lists; ``nlist`` 0: ``pipeline.score.retrieval.ivf_lists``'s rule)."""

    kind: Literal["flat", "ivf"] = "flat"
    nlist: int = Field(0, ge=0)
    nprobe: int = Field(16, ge=1)


class MixedIndexConfig(Strict):
    """The approximate indexes measured on a gallery that mixes parent and new vectors while a
    backfill runs (``pipeline.score.indexes``): faiss factory strings built from these values."""

    kinds: list[Literal["flat", "ivf-flat", "ivf-pq", "hnsw"]] = Field(
        ["flat", "ivf-flat", "ivf-pq", "hnsw"], min_length=1, description="flat (exact), IVF<nlist>,Flat, "
        "IVF<nlist>,PQ<pq_bytes>x8np (no polysemous training), HNSW<hnsw_neighbours>; to leave the table out, "
        "steps 0")
    k: PositiveInt = Field(10, description="recall@k against flat search on the same mixed gallery, mAP@k")
    nlist: int = Field(0, ge=0, description="IVF lists; 0: about 4 sqrt(gallery), at most gallery/39 (faiss's "
                                            "fewest training points per list; pipeline.score.retrieval.ivf_lists)")
    nprobe: PositiveInt = 16
    pq_bytes: int = Field(0, ge=0, description="PQ code bytes per vector (a divisor of the dimension); 0: half "
                                               "the dimension")
    hnsw_neighbours: PositiveInt = 32
    ef_search: PositiveInt = 64
    steps: int = Field(4, ge=0, description="shares 0, 1/steps, ..., 1 of the gallery re-encoded; 0: no table")
    latency_queries: PositiveInt = Field(200, description="queries searched one at a time for p50/p99 latency")
    min_recall: float = Field(0.95, gt=0, le=1, description="an index holds recall when its recall@k is at least "
                                                            "this at every share")


class ScoreConfig(Strict):
    """What the matrix scores and how (``pipeline.score``)."""

    split: Literal["train", "test"] = Field("test", description="the split encoded by every model: the query "
                                            "and the gallery set")
    topk: list[PositiveInt] = Field([1, 5], min_length=1, description="k of the top-k accuracies; at most the "
                                    "gallery's size (checked when scoring)")
    query_chunk: int = Field(1024, gt=0, description="queries per full-ranking chunk (at most)")
    threads: int = Field(0, ge=0, description="threads of one pair's full ranking; 0: every CPU this process may "
                                              "use (a pair's Ray task sets its own CPUs)")
    index: IndexConfig = IndexConfig()
    full_ranking: bool = Field(True, description="mAP and mAP@R over the full ranking; false: top-k only, for "
                                                 "very large galleries")
    pairs: Literal["all", "models", "counterparts"] = Field(
        "all", description="all: every ordered pair of equal dimension; models: every pair of the models (the N x N "
                           "matrix) and each transformed entry with its counterparts only; counterparts: each model "
                           "with itself, each new model and T21 entry against the old gallery, and each T12-mapped "
                           "old gallery with its new model both ways (pipeline.score.entries)")
    bootstrap_resamples: int = Field(1000, ge=0, description="resamples of the queries for each criterion cell's "
                                                             "paired interval (pipeline.score.uncertainty); 0: none")
    interval_level: float = Field(0.95, gt=0, lt=1, description="the criterion intervals' confidence level")
    split_rows: int = Field(1_000_000, gt=0, description="with in_ray and flat search: a pair whose gallery on disk "
                            "has more rows is scored in tasks of whole part files of about this many rows, merged "
                            "exactly")
    in_ray: bool = Field(False, description="score the pairs in Ray tasks across the cluster's nodes (one per GPU "
                         "of a GPU node, per CPU of another; pipeline.score.on_ray), merged into the same report as "
                         "one process makes; the embeddings folders must be on storage every node sees")
    max_flip_rate: float | None = Field(None, ge=0, le=1, description="a pair meets the verdict only when at most "
                                        "this share of its queries flips negatively (a top-1 hit under its "
                                        "gallery's reference pair, old/old for an old gallery, a miss under the "
                                        "pair: pipeline.score.flips); None: flips are reported, not judged")

    @model_validator(mode="after")
    def _flips_need_top1(self) -> "ScoreConfig":
        if self.max_flip_rate is not None and 1 not in self.topk:
            raise ValueError(f"max_flip_rate: negative flips are counted at top-1, which topk {self.topk} leaves out")
        return self


class MlflowConfig(Strict):
    tracking_uri: str | None = Field(None, description="None: sqlite:///<output_dir>/mlflow.db")
    experiment: str = "compat-embed"


@dataclass(frozen=True)
class RunContext:
    """Where a job's runs go: Ray Train's storage (checkpoints; shared storage on a cluster) and
    the MLflow tracking URI and experiment."""

    tracking_uri: str
    experiment: str
    storage_path: str = "outputs/ray"


def _old_model_kind(value: Any) -> str:
    imported = isinstance(value, ImportedModelConfig) or (isinstance(value, dict) and "source" in value)
    return "imported" if imported else "trained"


class PipelineConfig(Strict):
    """The whole embedded pipeline: ingest, old model, new models, encode, score."""

    description: str = Field("", description="one line for reports (what the experiment varies)")
    output_dir: str = "outputs/demo"
    ray_address: str | None = None
    concurrent_fits: int | None = Field(
        None, ge=1, description="training runs side by side (the new models, then the CMC fits), each its own "
                                "Ray Train run; None: as many as the cluster's CPUs (and GPUs) hold, given their workers")
    data: DataConfig = DataConfig()
    mlflow: MlflowConfig = MlflowConfig()
    old: Annotated[Annotated[TrainConfig, Tag("trained")] | Annotated[ImportedModelConfig, Tag("imported")],
                   Discriminator(_old_model_kind)] = Field(
        description="the model the new ones stay compatible with: trained here, or imported (with a `source`)")
    new: list[TrainConfig] = Field(min_length=1)
    cmc: list[CmcConfig] = []
    encode: EncodeConfig = EncodeConfig()
    score: ScoreConfig = ScoreConfig()

    @model_validator(mode="after")
    def _unique_names(self) -> "PipelineConfig":
        names = [self.old.name] + [m.name for m in self.new] + [c.name for c in self.cmc]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"model names must be unique, repeated: {dupes}")
        if isinstance(self.old, TrainConfig) and self.old.needs_old_model:
            raise ValueError(f"old.method {self.old.method!r} needs an old model of its own: the old model trains "
                             "without one")
        trained = {m.name for m in self.new}
        for cmc in self.cmc:
            if cmc.new_model not in trained:
                raise ValueError(f"cmc {cmc.name!r}: new_model {cmc.new_model!r} is not one of the new models {sorted(trained)}")
        return self

    @property
    def ingest_seed(self) -> int:
        """The seed of a source's train / test split (sources without one): the old model's, 0 for
        an imported one."""
        return self.old.seed if isinstance(self.old, TrainConfig) else 0

    def tracking_uri(self) -> str:
        return default_tracking_uri(self.mlflow, self.output_dir)

    def run_context(self) -> RunContext:
        return output_context(self.mlflow, self.output_dir)


SELECTION_FRACTION = 0.1  # the training split's share a lineage report chooses routes and orders on


class LineageConfig(Strict):
    """A lineage v1 -> v2 -> ... trained in order, each model after the first made compatible with
    the one before it, registered in the MLflow Model Registry and reported (``jobs.lineage``)."""

    output_dir: str = "outputs/lineage"
    ray_address: str | None = None
    registered_model: str = Field("compat-embed-lineage", pattern=NAME_PATTERN)
    data: DataConfig = DataConfig()
    mlflow: MlflowConfig = MlflowConfig()
    models: list[TrainConfig] = Field(min_length=2)
    encode: EncodeConfig = EncodeConfig()
    score: ScoreConfig = ScoreConfig()
    backfill_steps: int = Field(10, ge=1)
    indexes: MixedIndexConfig = MixedIndexConfig()
    selection_fraction: float = Field(
        SELECTION_FRACTION, gt=0, lt=1, description="the share of the training split (its validation rows at this "
        "fraction: pipeline.data.dataset.in_validation) on which the report chooses each model's route and backfill "
        "order before it scores the test split; models trained with validation_fraction of the same value never saw "
        "those rows")

    @model_validator(mode="after")
    def _chain(self) -> "LineageConfig":
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique, got {names}")
        if self.models[0].needs_old_model:
            raise ValueError(f"models.0.method {self.models[0].method!r} needs an old model: the lineage's first "
                             "model trains without one")
        for position, model in enumerate(self.models[1:], start=1):
            if not model.needs_old_model:
                raise ValueError(f"models.{position} ({model.name}): method {model.method!r} has no compatibility "
                                 "with its parent")
        dims = {m.name: m.model.embedding_dim for m in self.models}
        if len(set(dims.values())) > 1:
            raise ValueError(f"every model of a lineage needs one embedding_dim (its report compares each model with "
                             f"its parent directly), got {dims}")
        if self.score.pairs != "all":
            raise ValueError("score.pairs: a lineage report scores every pair of its models and each transformed "
                             "entry with its counterpart; leave it at 'all'")
        return self

    def tracking_uri(self) -> str:
        return default_tracking_uri(self.mlflow, self.output_dir)

    def run_context(self) -> RunContext:
        return output_context(self.mlflow, self.output_dir)


def default_tracking_uri(mlflow: MlflowConfig, output_dir: str) -> str:
    """The configured tracking URI, else a SQLite store in the output folder."""
    if mlflow.tracking_uri:
        return mlflow.tracking_uri
    return f"sqlite:///{(Path(output_dir) / 'mlflow.db').resolve()}"


def output_context(mlflow: MlflowConfig, output_dir: str) -> RunContext:
    """The runs of an experiment writing under ``output_dir``: Ray Train storage in ``ray/``."""
    return RunContext(default_tracking_uri(mlflow, output_dir), mlflow.experiment,
                      str(Path(output_dir).resolve() / "ray"))


def data_overrides(data: str) -> dict[str, Any]:
    """Overrides that run an experiment on a user's own images: its ingested copy and its output
    folder, keyed by the images' path."""
    source = Path(data).resolve()
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", source.name).strip("-") or "data"
    key = f"{slug}-{hashlib.sha1(str(source).encode()).hexdigest()[:8]}"
    return {"data": {"source": str(source), "root": f"data/{key}"}, "output_dir": f"outputs/{key}"}


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``override``, nested dicts merged key by key, except an old model's
    ``source`` of another ``kind``, which replaces the base's (its fields depend on its kind)."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        base_value = merged.get(key)
        new_kind = key == "source" and isinstance(value, dict) and isinstance(base_value, dict) \
            and value.get("kind", base_value.get("kind")) != base_value.get("kind")
        if isinstance(value, dict) and isinstance(base_value, dict) and not new_kind:
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def format_error(source: str, error: ValidationError) -> str:
    """One line per bad key of a pydantic ``error``, each naming ``source`` and the key."""
    lines = []
    for item in error.errors():
        loc = item["loc"]
        key = ".".join(str(part) for index, part in enumerate(loc)
                       if not (index and part in UNION_TAGS.get(loc[index - 1], ()))) or "<top level>"
        if item["type"] == "extra_forbidden":
            lines.append(f"{source}: unknown key '{key}'")
        elif item["type"] == "missing":
            lines.append(f"{source}: missing key '{key}'")
        else:
            lines.append(f"{source}: key '{key}': {item['msg']} (got {item.get('input')!r})")
    return "\n".join(lines)


def validate(schema: type[BaseModel], raw: Any, source: str = "config") -> Any:
    """``raw`` checked against ``schema``, or ``ConfigError`` naming every bad key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(raw).__name__}")
    try:
        return schema.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(format_error(source, error)) from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return raw


def read_experiment(path: str | Path, _extending: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A YAML experiment with the file its ``base`` key names (relative to its own folder) merged
    under it, recursively: the file states only what differs from its base."""
    path = Path(path).resolve()
    if path in _extending:
        raise ConfigError(f"{path}: key 'base': the files extend each other in a cycle "
                          f"({' -> '.join(str(p) for p in (*_extending, path))})")
    raw = read_yaml(path)
    base = raw.pop("base", None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise ConfigError(f"{path}: key 'base': expected the path of the file it extends (got {base!r})")
    return deep_merge(read_experiment(path.parent / base, (*_extending, path)), raw)


def with_train_defaults(raw: dict[str, Any], roles: tuple[str, ...], source: str) -> dict[str, Any]:
    """``raw`` with its ``train`` block (defaults shared by every model) merged under each model
    config of ``roles``: a mapping (``old``), or a list of mappings (``new``, ``models``)."""
    raw = dict(raw)
    defaults = raw.pop("train", {}) or {}
    if not isinstance(defaults, dict):
        raise ConfigError(f"{source}: key 'train': expected a mapping of training defaults")
    for role in roles:
        value = raw.get(role)
        if isinstance(value, dict) and "source" not in value:  # an imported model does not train
            raw[role] = deep_merge(defaults, value)
        elif isinstance(value, list):
            raw[role] = [deep_merge(defaults, model) if isinstance(model, dict) else model for model in value]
    return raw


def expand_seeds(raw: dict[str, Any], seeds: list[int], source: str = "config") -> dict[str, Any]:
    """Every ``new`` and ``cmc`` entry once per seed, named ``<name>-s<seed>`` (a CMC entry's
    ``new_model`` follows its seed); the old model is trained once."""
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ConfigError(f"{source}: key 'seeds': expected a non-empty list of integers (got {seeds!r})")
    raw = dict(raw)
    for key, renamed in (("new", ()), ("cmc", ("new_model",))):
        entries = raw.get(key) or []
        if not isinstance(entries, list) or not all(isinstance(e, dict) and "name" in e for e in entries):
            raise ConfigError(f"{source}: key '{key}': expected a list of mappings, each with a name")
        raw[key] = [{**entry, "name": f"{entry['name']}-s{seed}", "seed": seed,
                     **{field: f"{entry[field]}-s{seed}" for field in renamed if field in entry}}
                    for seed in seeds for entry in entries]
    return raw


def pipeline_from_dict(raw: dict[str, Any], source: str = "config") -> PipelineConfig:
    """Expand ``seeds`` (see ``expand_seeds``) and the ``train`` defaults into ``old`` and every
    ``new`` entry, then validate."""
    raw = dict(raw)
    if "seeds" in raw:
        raw = expand_seeds(raw, raw.pop("seeds"), source)
    return validate(PipelineConfig, with_train_defaults(raw, ("old", "new"), source), source)


def load_pipeline_config(path: str | Path, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    raw = deep_merge(read_experiment(path), overrides or {})
    return pipeline_from_dict(raw, str(path))


def load_lineage_config(path: str | Path) -> LineageConfig:
    """A lineage config with its ``train`` defaults merged into every model."""
    return validate(LineageConfig, with_train_defaults(read_experiment(path), ("models",), str(path)), str(path))


def load_train_config(path: str | Path) -> TrainConfig:
    return validate(TrainConfig, read_yaml(path), str(path))


def load_cmc_config(path: str | Path) -> CmcConfig:
    return validate(CmcConfig, read_yaml(path), str(path))
