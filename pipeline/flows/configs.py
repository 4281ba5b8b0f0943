"""The configs a flow runs, read from YAML: merged (``pipeline.config.loading``), validated against
their schema, and each fit's method checked against the catalogue (``pipeline.compat.methods``,
which the schemas cannot import), so that every mistake is refused before anything starts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.compat.methods import check_fits
from pipeline.config import (
    CmcConfig,
    LineageConfig,
    PipelineConfig,
    TrainConfig,
    deep_merge,
    expand_seeds,
    read_experiment,
    read_yaml,
    validate,
    with_train_defaults,
)


def pipeline_from_dict(raw: dict[str, Any], source: str = "config") -> PipelineConfig:
    """Expand ``seeds`` (see ``expand_seeds``) and the ``train`` defaults into ``old`` and every
    ``new`` entry, then validate."""
    raw = dict(raw)
    if "seeds" in raw:
        raw = expand_seeds(raw, raw.pop("seeds"), source)
    config = validate(PipelineConfig, with_train_defaults(raw, ("old", "new"), source), source)
    check_fits(config.fits(), source)
    return config


def load_pipeline_config(path: str | Path, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    raw = deep_merge(read_experiment(path), overrides or {})
    return pipeline_from_dict(raw, str(path))


def load_lineage_config(path: str | Path) -> LineageConfig:
    """A lineage config with its ``train`` defaults merged into every model."""
    config = validate(LineageConfig, with_train_defaults(read_experiment(path), ("models",), str(path)), str(path))
    check_fits(config.fits(), str(path))
    return config


def load_train_config(path: str | Path) -> TrainConfig:
    config = validate(TrainConfig, read_yaml(path), str(path))
    check_fits([("", config, None)], str(path))
    return config


def load_cmc_config(path: str | Path) -> CmcConfig:
    config = validate(CmcConfig, read_yaml(path), str(path))
    check_fits([("", config, None)], str(path))
    return config
