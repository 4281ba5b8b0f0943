"""Typed, validated experiment configs, each stage's schema in its own module.

A YAML file states only what differs from the defaults. Loading refuses an unknown key, a wrong
type or an out-of-range value with one message that names the file and the key
(``ConfigError``), so a typo never silently falls back to a default. This package imports nothing
else of the project: the stages import their schemas from it.
"""

from pipeline.config.base import NAME_PATTERN, ConfigError, Strict, format_error, validate
from pipeline.config.compat import CompatConfig, RetrievalConfig, RetrievalSide
from pipeline.config.data import (
    DataConfig,
    EmbeddingsSource,
    EncodeConfig,
    ImportedModelConfig,
    ModelSource,
    OnnxSource,
    TimmSource,
    TorchScriptSource,
)
from pipeline.config.experiment import (
    DEFAULT_EXPERIMENT,
    SELECTION_FRACTION,
    LineageConfig,
    MlflowConfig,
    PipelineConfig,
    RunContext,
    default_tracking_uri,
    sqlite_tracking_uri,
)
from pipeline.config.fits import SCHEDULING_FIELDS, AugmentConfig, CmcConfig, FitConfig, TrainConfig
from pipeline.config.index import (
    INDEX_KINDS,
    SCORING_KINDS,
    SERVING_KINDS,
    IndexConfig,
    MixedIndexConfig,
    factory_string,
    ivf_lists,
)
from pipeline.config.loading import (
    data_overrides,
    deep_merge,
    expand_seeds,
    read_experiment,
    read_yaml,
    with_train_defaults,
)
from pipeline.config.model import (
    BUILT_IN_ARCHITECTURES,
    TIMM_PREFIX,
    HeadConfig,
    ModelConfig,
    Preprocessing,
    TransformConfig,
)
from pipeline.config.score import ScoreConfig

__all__ = [
    "BUILT_IN_ARCHITECTURES", "DEFAULT_EXPERIMENT", "INDEX_KINDS", "NAME_PATTERN", "SCHEDULING_FIELDS",
    "SCORING_KINDS", "SELECTION_FRACTION", "SERVING_KINDS", "TIMM_PREFIX", "AugmentConfig", "CmcConfig",
    "CompatConfig", "ConfigError", "DataConfig", "EmbeddingsSource", "EncodeConfig", "FitConfig", "HeadConfig",
    "ImportedModelConfig", "IndexConfig", "LineageConfig", "MixedIndexConfig", "MlflowConfig", "ModelConfig",
    "ModelSource", "OnnxSource", "PipelineConfig", "Preprocessing", "RetrievalConfig", "RetrievalSide",
    "RunContext", "ScoreConfig", "Strict", "TimmSource", "TorchScriptSource", "TrainConfig", "TransformConfig",
    "data_overrides", "deep_merge", "default_tracking_uri", "expand_seeds", "factory_string", "format_error",
    "ivf_lists", "read_experiment", "read_yaml", "sqlite_tracking_uri", "validate", "with_train_defaults",
]
