"""A sweep's config: what is searched, around which training config, and how.

The search space maps a dotted ``TrainConfig`` key (``compat.compactness_margin``,
``transform.blocks``, ``method``) to exactly one distribution. Loading checks every key and
every value the space can take against ``TrainConfig`` itself, so a typo or an out-of-range
bound is refused with the key's name before any trial starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator
from ray import tune

from pipeline.compat.methods import check_fits
from pipeline.config import (
    NAME_PATTERN,
    ConfigError,
    DataConfig,
    MlflowConfig,
    Strict,
    TrainConfig,
    deep_merge,
    format_error,
    read_experiment,
    sqlite_tracking_uri,
    with_train_defaults,
)


class ParamSpec(Strict):
    """One searched key: ``choice`` (a list), ``uniform`` or ``loguniform`` ([low, high]),
    ``randint`` ([low, high], high exclusive)."""

    choice: list[Any] | None = Field(None, min_length=1)
    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    randint: tuple[int, int] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> "ParamSpec":
        given = [name for name in ("choice", "uniform", "loguniform", "randint") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of choice, uniform, loguniform, randint (got {given or 'none'})")
        bounds = self.uniform or self.loguniform or self.randint
        if bounds and not bounds[0] < bounds[1]:
            raise ValueError(f"low {bounds[0]} must be below high {bounds[1]}")
        if self.loguniform and self.loguniform[0] <= 0:
            raise ValueError(f"loguniform needs a positive low bound (got {self.loguniform[0]})")
        return self

    def extremes(self) -> list[Any]:
        """The values that bound what this distribution can draw (checked against TrainConfig)."""
        if self.choice is not None:
            return list(self.choice)
        if self.randint is not None:
            return [self.randint[0], self.randint[1] - 1]
        return list(self.uniform or self.loguniform)

    def to_tune(self, grid: bool) -> Any:
        if self.choice is not None:
            return tune.grid_search(self.choice) if grid else tune.choice(self.choice)
        if self.uniform is not None:
            return tune.uniform(*self.uniform)
        if self.loguniform is not None:
            return tune.loguniform(*self.loguniform)
        return tune.randint(*self.randint)


class SearchConfig(Strict):
    algorithm: Literal["random", "grid", "optuna"] = Field(
        "random", description="random sampling; grid: every combination of the choice keys (the others sampled); "
                              "optuna: TPE through Ray Tune's OptunaSearch")
    num_samples: int = Field(6, ge=1, description="trials (grid: samples per grid point)")
    seed: int = 0
    max_concurrent_trials: int | None = Field(None, ge=1, description="None: as many as the cluster's CPUs hold")


class AshaConfig(Strict):
    """ASHA early stopping on the objective, one rung per ``grace_period`` epochs."""

    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(2.0, gt=1)


# Keys the sweep reads once from ``trial``: trial resources, ASHA's horizon, the rows the
# statistics and the validation are computed on.
FIXED_KEYS = {"name", "epochs", "num_workers", "cpus_per_worker", "use_gpu", "placement_strategy", "max_failures",
              "classes", "data_fraction", "seed", "validation_fraction", "min_steps", "compat.boundary",
              "compat.boundary_quantile", "compat.old_classes_only"}


class SweepConfig(Strict):
    """A sweep: the old model and the independent reference (trained once), the config of
    the new model, the validation rows, the search space and its algorithm."""

    name: str = Field(pattern=NAME_PATTERN)
    output_dir: str = "outputs/sweeps"
    ray_address: str | None = None
    data: DataConfig = DataConfig()
    mlflow: MlflowConfig = MlflowConfig(experiment="compat-embed-sweeps")
    validation_fraction: float = Field(0.1, gt=0, lt=1, description="share of the training split held out; "
                                       "every model, statistics included, leaves these rows out")
    old: TrainConfig
    trial: TrainConfig = Field(description="the new model's config that each trial's values override; with "
                                           "the independent method it is the reference")
    space: dict[str, ParamSpec] = Field(min_length=1)
    search: SearchConfig = SearchConfig()
    asha: AshaConfig = AshaConfig()

    @model_validator(mode="after")
    def _space_fits_the_train_config(self) -> "SweepConfig":
        fixed = sorted(key for key in self.space if key in FIXED_KEYS)
        if fixed:
            raise ValueError(f"space keys {fixed} cannot be searched: the sweep fixes them once from 'trial' "
                             "(trial resources, epochs for ASHA, the statistics' and validation rows)")
        for key, spec in self.space.items():
            for value in spec.extremes():
                try:
                    trial_config(self.trial, {key: value})
                except ValueError as error:
                    raise ValueError(f"space key '{key}' value {value!r}: {error}") from None
        return self

    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    def tracking_uri(self) -> str:
        return self.mlflow.tracking_uri or sqlite_tracking_uri(self.run_dir())

    def tune_space(self) -> dict[str, Any]:
        grid = self.search.algorithm == "grid"
        return {key: spec.to_tune(grid) for key, spec in self.space.items()}


def _nested(key: str, value: Any) -> dict[str, Any]:
    tree: Any = value
    for part in reversed(key.split(".")):
        tree = {part: tree}
    return tree


def trial_config(template: TrainConfig, params: dict[str, Any]) -> TrainConfig:
    """``template`` with a trial's dotted-key values; a key or value TrainConfig refuses is an error."""
    tree = template.model_dump()
    for key, value in params.items():
        node = tree
        for part in key.split(".")[:-1]:
            if not isinstance(node, dict) or part not in node:
                raise ValueError(f"'{key}' is not a key of the training config")
            node = node[part]
        if not isinstance(node, dict) or key.split(".")[-1] not in node:
            raise ValueError(f"'{key}' is not a key of the training config")
        tree = deep_merge(tree, _nested(key, value))
    try:
        config = TrainConfig.model_validate(tree)
    except ValidationError as error:
        raise ValueError(format_error("trial", error)) from None
    check_fits([("", config, None)], "trial")
    return config


def load_sweep_config(path: str | Path) -> SweepConfig:
    """A sweep YAML (``base`` names a file it extends); its ``train`` block (if any) holds
    defaults shared by ``old`` and ``trial``."""
    raw = with_train_defaults(read_experiment(path), ("old", "trial"), str(path))
    try:
        return SweepConfig.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(format_error(str(path), error)) from None
