"""The schemas of whole experiments: the embedded pipeline and a lineage, and where their runs go."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import Discriminator, Field, Tag, model_validator

from pipeline.config.base import NAME_PATTERN, Strict
from pipeline.config.data import DataConfig, EncodeConfig, ImportedModelConfig
from pipeline.config.fits import CmcConfig, FitConfig, TrainConfig
from pipeline.config.index import MixedIndexConfig
from pipeline.config.score import ScoreConfig

DEFAULT_EXPERIMENT = "compat-embed"  # the MLflow experiment of every job that names none


class MlflowConfig(Strict):
    tracking_uri: str | None = Field(None, description="None: sqlite:///<output_dir>/mlflow.db")
    experiment: str = DEFAULT_EXPERIMENT


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
        trained = {m.name for m in self.new}
        for cmc in self.cmc:
            if cmc.new_model not in trained:
                raise ValueError(f"cmc {cmc.name!r}: new_model {cmc.new_model!r} is not one of the new models {sorted(trained)}")
        return self

    def fits(self) -> list[tuple[str, FitConfig, bool | None]]:
        """Each fit with its key and whether its method must (True) or must not (False) train
        against an old model (None: either); ``pipeline.compat.methods.check_fits`` checks them."""
        old = [("old", self.old, False)] if isinstance(self.old, TrainConfig) else []
        return [*old, *((f"new.{i}", m, None) for i, m in enumerate(self.new)),
                *((f"cmc.{i}", c, None) for i, c in enumerate(self.cmc))]

    @property
    def ingest_seed(self) -> int:
        """The seed of a source's train / test split (sources without one): the old model's, 0 for
        an imported one."""
        return self.old.seed if isinstance(self.old, TrainConfig) else 0

    def tracking_uri(self) -> str:
        return default_tracking_uri(self.mlflow, self.output_dir)


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
        dims = {m.name: m.model.embedding_dim for m in self.models}
        if len(set(dims.values())) > 1:
            raise ValueError(f"every model of a lineage needs one embedding_dim (its report compares each model with "
                             f"its parent directly), got {dims}")
        if self.score.pairs != "all":
            raise ValueError("score.pairs: a lineage report scores every pair of its models and each transformed "
                             "entry with its counterpart; leave it at 'all'")
        return self

    def fits(self) -> list[tuple[str, FitConfig, bool | None]]:
        """Each model with its key: the first trains without a parent, every other one against its own."""
        return [(f"models.{i}", model, i > 0) for i, model in enumerate(self.models)]

    def tracking_uri(self) -> str:
        return default_tracking_uri(self.mlflow, self.output_dir)


def default_tracking_uri(mlflow: MlflowConfig, output_dir: str) -> str:
    """The configured tracking URI, else a SQLite store in the output folder."""
    return mlflow.tracking_uri or sqlite_tracking_uri(output_dir)


def sqlite_tracking_uri(folder: str | Path) -> str:
    """The default MLflow store of the runs writing under ``folder``: SQLite, ``mlflow.db`` in it."""
    return f"sqlite:///{(Path(folder) / 'mlflow.db').resolve()}"
