"""The embedded pipeline: ingest -> old model -> statistics -> new models -> CMC fits -> encode ->
score, from one ``PipelineConfig``.

Every step calls the same library function as its job; this module only orders them, as a list
of stages that each read and extend one ``Run``, and asks the run's ``Workspace``
(``pipeline.flows.workspace``) where each output lives. A new stage is one function of a ``Run``
added to ``STAGES`` (or passed to ``run_pipeline``), and the workspace entry it writes to.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.compat.methods import Role, method_of
from pipeline.config import CmcConfig, FitConfig, ImportedModelConfig, PipelineConfig, RunContext, TrainConfig
from pipeline.data.dataset import class_names, read_dataset_info
from pipeline.data.embeddings import EmbeddingSet, read_embeddings
from pipeline.data.importers import ensure_dataset
from pipeline.encode.mapped import matrix_entries
from pipeline.encode.split import encode_split, train_split_embeddings
from pipeline.flows.fits import fit_against, reads_parent_embeddings
from pipeline.flows.workspace import Workspace
from pipeline.model.encoders import import_model
from pipeline.runtime import settle, side_by_side
from pipeline.score import counterpart_pairs, model_pairs, roles_of, score_and_report
from pipeline.train.cross_model import fit_cmc
from pipeline.train.driver import fits_at_once
from pipeline.train.training import fit_model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PipelineResult:
    report_dir: Path
    tracking_uri: str
    matrix_text: str
    seconds: float


@dataclass
class Run:
    """One pipeline run: its config, workspace, dataset and the tag that names its Ray Train runs,
    and what its stages made so far."""

    cfg: PipelineConfig
    workspace: Workspace
    dataset: Path
    classes: list[str]                  # the dataset's
    context: RunContext
    tag: str
    models: dict[str, Path] = field(default_factory=dict)           # each model's artifact folder, the old first
    transformations: dict[str, Path] = field(default_factory=dict)  # each CMC fit's artifact folder
    matrix_text: str = ""

    def run_name(self, name: str) -> str:
        return f"{name}-{self.tag}"


Stage = Callable[[Run], None]


def run_pipeline(cfg: PipelineConfig, stages: Sequence[Stage] | None = None,
                 workspace: Workspace | None = None) -> PipelineResult:
    """``stages`` (default ``STAGES``) in order, writing under ``workspace`` (default: the
    config's ``output_dir``)."""
    started = time.perf_counter()
    workspace = workspace or Workspace.at(cfg.output_dir)
    workspace.root.mkdir(parents=True, exist_ok=True)
    dataset = ensure_dataset(cfg.data, cfg.ingest_seed)
    info = read_dataset_info(dataset)
    log.info("pipeline: dataset %s, %d classes, %s rows", dataset, len(info.classes), info.rows)
    run = Run(cfg, workspace, dataset, info.classes, workspace.context(cfg.mlflow), time.strftime("%Y%m%d-%H%M%S"))
    for stage in STAGES if stages is None else stages:
        stage(run)
    return PipelineResult(report_dir=workspace.report, tracking_uri=run.context.tracking_uri,
                          matrix_text=run.matrix_text, seconds=time.perf_counter() - started)


def fit_models(run: Run) -> None:
    """The old model and the new ones (in the config's order), as many side by side as the
    cluster holds: a new model that needs nothing of the old one (independent training) starts
    with it; the others queue once it is done (``pipeline.flows.fits.fit_against``)."""
    cfg, workspace = run.cfg, run.workspace
    at_once = fits_at_once([fit for fit in (cfg.old, *cfg.new) if isinstance(fit, FitConfig)], cfg.concurrent_fits)
    log.info("fits: the old model and %d new models, %d at once", len(cfg.new), at_once)

    def fit_new(new: TrainConfig, old_train: EmbeddingSet | None = None) -> Path:
        return fit_against(workspace, new, cfg.old.name, run.dataset, run.context, encode=cfg.encode,
                           run_name=run.run_name(new.name), parent_embeddings=old_train)

    with ThreadPoolExecutor(max_workers=at_once) as pool:
        old_fit = pool.submit(_old_model, run)
        fits = {new.name: pool.submit(fit_new, new) for new in cfg.new if not method_of(new).needs_old_model}
        settle(pool, fits.values(), until=old_fit)
        followers = [new for new in cfg.new if method_of(new).needs_old_model]
        old_train = None  # encoded and read once, then shared by the fits side by side
        if any(reads_parent_embeddings(new) for new in followers):
            old_train = train_split_embeddings(old_fit.result(), run.dataset,
                                               workspace.embeddings(cfg.old.name, "train"), cfg.encode)
        fits.update({new.name: pool.submit(fit_new, new, old_train) for new in followers})
        settle(pool, fits.values())
        run.models = {cfg.old.name: old_fit.result(), **{new.name: fits[new.name].result() for new in cfg.new}}


def _old_model(run: Run) -> Path:
    """The old model's artifact: trained here, or imported from the team's file or embeddings."""
    old, folder = run.cfg.old, run.workspace.model(run.cfg.old.name)
    if isinstance(old, ImportedModelConfig):
        return import_model(old, class_names(run.classes, old.classes), folder)
    return fit_model(old, run.dataset, folder, run.context, run_name=run.run_name(old.name))


def fit_transformations(run: Run) -> None:
    """The CMC fits between the old model and a new one, each model's train split encoded first
    (once: fits side by side then only read them)."""
    cfg, workspace, models = run.cfg, run.workspace, run.models
    sets = {name: train_split_embeddings(models[name], run.dataset, workspace.embeddings(name, "train"), cfg.encode)
            for name in dict.fromkeys(([cfg.old.name] + [c.new_model for c in cfg.cmc]) if cfg.cmc else [])}

    def fit_transformations(c: CmcConfig) -> Path:
        return fit_cmc(c, models[cfg.old.name], models[c.new_model], run.dataset, workspace.model(c.name),
                       run.context, train_sets=(sets[cfg.old.name], sets[c.new_model]),
                       files=workspace.cmc_files(c.name), run_name=run.run_name(c.name))

    fitted = side_by_side(fit_transformations, cfg.cmc, fits_at_once(cfg.cmc, cfg.concurrent_fits), "CMC fits")
    run.transformations = dict(zip([c.name for c in cfg.cmc], fitted))


def score(run: Run) -> None:
    """Every model encodes the scored split; the matrix entries, scored into the report."""
    cfg, workspace, split = run.cfg, run.workspace, run.cfg.score.split
    sets = {name: read_embeddings(encode_split(folder, run.dataset, split, workspace.embeddings(name, split),
                                               cfg.encode))
            for name, folder in run.models.items()}
    entries = matrix_entries(run.models, sets, cfg.old.name, workspace.embeddings_root, split, run.transformations)
    independent = next((m.name for m in cfg.new if method_of(m).role is Role.INDEPENDENT), None)
    roles = roles_of(run.models[cfg.old.name], independent)
    pairs = {"all": None, "models": model_pairs(entries), "counterparts": counterpart_pairs(entries)}[cfg.score.pairs]
    run.matrix_text = score_and_report(entries, roles, cfg.score, workspace.report, run.context, pairs)


STAGES: tuple[Stage, ...] = (fit_models, fit_transformations, score)
