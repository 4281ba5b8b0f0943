"""The schemas of a Ray Train fit: compatible training and CMC (``pipeline.train``)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from pipeline.config.base import NAME_PATTERN, Strict
from pipeline.config.compat import CompatConfig
from pipeline.config.model import ModelConfig, TransformConfig


class FitConfig(Strict):
    """What every Ray Train fit shares, compatible training and CMC alike: its name, method, seed,
    budget, optimizer and resources (``pipeline.train.driver`` runs both)."""

    method_kind: ClassVar[str]  # the catalogue's kind of its methods: "training" or "CMC"; the catalogue
    # (pipeline.compat.methods, above this package) checks the name: pipeline.flows.configs

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
    def reserved_cpus(self) -> float:
        """Its workers' CPUs and, streamed, its decoding tasks' (``pipeline.train.stream.decoding_pool``)."""
        return super().reserved_cpus + (self.decoding_cpus if self.ingest == "stream" else 0)

    @property
    def decoding_cpus(self) -> float:
        """What a streamed fit reserves for its decoding tasks."""
        return 1.0 if self.decode_cpus is None else self.decode_cpus


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
