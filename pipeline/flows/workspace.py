"""A run folder's layout, owned here alone: every step asks its ``Workspace`` where an output
lives, so that readers never need to know how writers lay files out.

    models/<name>/              model artifacts (weights + card) and CMC artifacts (transformations + card)
    stats/<name>.npz            the old-space statistics a model trains with; a CMC fit's features and
                                statistics of both spaces (stats/<cmc>.features.npz, .old_space, .new_space)
    embeddings/<name>/<split>/  embeddings Parquet, of a model or a transformed matrix entry
    report/                     the matrix's report files (``pipeline.score.report``)
    validation/                 a sweep's validation rows: the old model's features and the references
    registry/                   a lineage's report over its registered versions: a workspace of its own
    ray/                        Ray Train storage (checkpoints)
    results_run.json            a scenario's run: its seconds, commit and date (``pipeline.flows.scenarios``)
    sweep.yaml, trials.csv, best.yaml, objective_vs_params.png, tune/
                                a sweep (``tuning.sweep``): the config it ran, its trials, the best
                                config, the objective per value, Ray Tune's storage
    confirm-report/, confirm.json
                                its confirmation (``tuning.confirm``): the seeds' report, the table
    mlflow.db, mlartifacts/     the MLflow store, unless a tracking URI is configured
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.config import MlflowConfig, RunContext, default_tracking_uri
from pipeline.train.cross_model import CmcFiles

TIMING_FILE = "results_run.json"


def _entry(relative: str) -> property:
    """A fixed file or folder of the layout, ``relative`` to the workspace's root."""
    return property(lambda workspace: workspace.root / relative, doc=f"``{relative}`` under the root")


@dataclass(frozen=True)
class Workspace:
    """The folder one pipeline, lineage or sweep writes under (``root``, absolute)."""

    root: Path

    @classmethod
    def at(cls, folder: str | Path) -> "Workspace":
        return cls(Path(folder).resolve())

    def model(self, name: str) -> Path:
        return self.root / "models" / name

    def statistics(self, name: str) -> Path:
        return self.root / "stats" / f"{name}.npz"

    def embeddings(self, name: str, split: str) -> Path:
        return self.embeddings_root / name / split

    @property
    def embeddings_root(self) -> Path:
        """Where each matrix entry's embeddings folders go (``pipeline.encode.mapped.matrix_entries``)."""
        return self.root / "embeddings"

    def cmc_files(self, cmc: str) -> CmcFiles:
        """What a CMC fit writes before it trains."""
        return CmcFiles(features=self.root / "stats" / f"{cmc}.features.npz",
                        old_space=self.root / "stats" / f"{cmc}.old_space.npz",
                        new_space=self.root / "stats" / f"{cmc}.new_space.npz")

    report = _entry("report")
    validation_features = _entry("validation/old_features.npz")
    validation_references = _entry("validation/references.json")
    timing = _entry(TIMING_FILE)
    sweep_config = _entry("sweep.yaml")
    trials = _entry("trials.csv")
    best_config = _entry("best.yaml")
    objective_plot = _entry("objective_vs_params.png")
    tune = _entry("tune")
    confirm_report = _entry("confirm-report")
    confirmation = _entry("confirm.json")
    ray = _entry("ray")

    @property
    def registry(self) -> "Workspace":
        return Workspace(self.root / "registry")

    def context(self, mlflow: MlflowConfig) -> RunContext:
        """Where the runs go: the configured MLflow store (else SQLite in ``root``), Ray Train's storage in ``ray/``."""
        return RunContext(default_tracking_uri(mlflow, str(self.root)), mlflow.experiment, str(self.ray))
