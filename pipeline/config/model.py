"""The schemas of a model: its architecture, head, input and transformations (``pipeline.model``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from pipeline.config.base import Strict


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
