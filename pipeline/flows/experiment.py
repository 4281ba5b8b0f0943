"""The embedded pipeline: ingest -> old model -> statistics -> new models -> CMC fits -> encode ->
score, from one ``PipelineConfig``.

Every step calls the same library function as its job; this module only orders them and
decides where each output lives under ``output_dir``:

    models/<name>/              model artifacts (weights + card), and CMC artifacts (transformations + card)
    stats/<name>.npz            old-space statistics of each new model that needs them
    embeddings/<name>/<split>/  embeddings Parquet
    report/                     report.parquet, report.csv, heatmap.png, entries.json (what each
                                matrix entry is: its base model, transformation, counterpart)
    ray/                        Ray Train storage (checkpoints)
    mlflow.db, mlartifacts/     the MLflow store (unless a tracking URI is configured)

A lineage (``pipeline.lineage.chain``) trains into the same folders, then reports from the
registry's versions under ``registry/``.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from pipeline.compat.methods import Role, method_of
from pipeline.config import CmcConfig, FitConfig, ImportedModelConfig, PipelineConfig, RunContext, TrainConfig
from pipeline.data.dataset import class_names, read_dataset_info
from pipeline.data.embeddings import read_embeddings
from pipeline.data.importers import ensure_dataset
from pipeline.encode.mapped import matrix_entries
from pipeline.encode.split import encode_split
from pipeline.model.encoders import import_model
from pipeline.runtime import runs_at_once, settle, side_by_side
from pipeline.score.entries import counterpart_pairs, model_pairs
from pipeline.score.report import roles_of, score_and_report
from pipeline.train.cross_model import fit_cmc
from pipeline.train.driver import run_resources
from pipeline.train.inputs import stats_for_model, train_split_embeddings
from pipeline.train.training import fit_model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PipelineResult:
    report_dir: Path
    tracking_uri: str
    matrix_text: str
    seconds: float


@dataclass(frozen=True)
class _Run:
    """One pipeline run: its config, where it writes, and the tag that names its Ray Train runs."""

    cfg: PipelineConfig
    out: Path
    dataset: Path
    context: RunContext
    tag: str

    def run_name(self, name: str) -> str:
        return f"{name}-{self.tag}"


def run_pipeline(cfg: PipelineConfig) -> PipelineResult:
    started = time.perf_counter()
    out = Path(cfg.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    dataset = ensure_dataset(cfg.data, cfg.ingest_seed)
    info = read_dataset_info(dataset)
    log.info("pipeline: dataset %s, %d classes, %s rows", dataset, len(info.classes), info.rows)
    run = _Run(cfg, out, dataset, cfg.run_context(), time.strftime("%Y%m%d-%H%M%S"))
    models = _fit_models(run, info.classes)
    cmc = _fit_transformations(run, models)
    report = _score(run, models, cmc)
    return PipelineResult(report_dir=out / "report", tracking_uri=run.context.tracking_uri, matrix_text=report,
                          seconds=time.perf_counter() - started)


def _fit_models(run: _Run, dataset_classes: list[str]) -> dict[str, Path]:
    """The old model and the new ones (in the config's order), as many side by side as the
    cluster holds: a new model that needs nothing of the old one (independent training) starts
    with it; the others queue once it is done, from its statistics (the forward manner also reads
    the old train-split embeddings the statistics came from)."""
    cfg, out, dataset = run.cfg, run.out, run.dataset
    at_once = _at_once(run, [cfg.old, *cfg.new])
    log.info("fits: the old model and %d new models, %d at once", len(cfg.new), at_once)
    with ThreadPoolExecutor(max_workers=at_once) as pool:
        old_fit = pool.submit(_old_model, run, dataset_classes)
        fits = {new.name: pool.submit(_fit_new, run, new) for new in cfg.new if not method_of(new).needs_old_model}
        settle(pool, fits.values(), until=old_fit)
        old_dir, old_embeddings = old_fit.result(), None
        for new in (new for new in cfg.new if method_of(new).needs_old_model):
            stats = None
            if method_of(new).needs_statistics:
                if old_embeddings is None:
                    old_embeddings = train_split_embeddings(old_dir, dataset, out / "embeddings" / cfg.old.name /
                                                            "train", cfg.encode)
                stats = stats_for_model(new, old_dir, old_embeddings, dataset, out / "stats" / f"{new.name}.npz")
            fits[new.name] = pool.submit(_fit_new, run, new, old_dir, stats,
                                         old_embeddings.path if method_of(new).reads_old_features(new.compat) else None)
        settle(pool, fits.values())
        return {cfg.old.name: old_dir, **{new.name: fits[new.name].result() for new in cfg.new}}


def _at_once(run: _Run, fits: list[FitConfig | ImportedModelConfig]) -> int:
    """How many of ``fits`` the cluster holds side by side (an imported old model holds nothing)."""
    trained = [fit for fit in fits if isinstance(fit, FitConfig)]
    per_run = {key: max((run_resources(fit)[key] for fit in trained), default=0) for key in ("CPU", "GPU")}
    return runs_at_once(per_run, run.cfg.concurrent_fits)


def _old_model(run: _Run, dataset_classes: list[str]) -> Path:
    """The old model's artifact: trained here, or imported from the team's file or embeddings."""
    old, folder = run.cfg.old, run.out / "models" / run.cfg.old.name
    if isinstance(old, ImportedModelConfig):
        classes = class_names(dataset_classes, old.classes)
        return import_model(old, classes, folder)
    return fit_model(old, run.dataset, folder, run.context, run_name=run.run_name(old.name))


def _fit_new(run: _Run, new: TrainConfig, old_dir: Path | None = None, stats: Path | None = None,
             old_features: str | Path | None = None) -> Path:
    return fit_model(new, run.dataset, run.out / "models" / new.name, run.context, run_name=run.run_name(new.name),
                     old_model=old_dir, stats=stats, parent=run.cfg.old.name,
                     old_features=old_features)


def _fit_transformations(run: _Run, models: dict[str, Path]) -> dict[str, Path]:
    """The CMC fits between the old model and a new one, each model's train split encoded first
    (once: fits side by side then only read them)."""
    cfg, out = run.cfg, run.out
    for name in dict.fromkeys(([cfg.old.name] + [c.new_model for c in cfg.cmc]) if cfg.cmc else []):
        train_split_embeddings(models[name], run.dataset, out / "embeddings" / name / "train", cfg.encode)

    def fit_transformations(c: CmcConfig) -> Path:
        return fit_cmc(c, models[cfg.old.name], models[c.new_model], run.dataset, out / "models" / c.name, run.context,
                       work_dir=out, encode=cfg.encode, run_name=run.run_name(c.name))

    fitted = side_by_side(fit_transformations, cfg.cmc, _at_once(run, cfg.cmc), "CMC fits")
    return dict(zip([c.name for c in cfg.cmc], fitted))


def _score(run: _Run, models: dict[str, Path], cmc: dict[str, Path]) -> str:
    """Every model encodes the scored split; the matrix entries, scored into the report."""
    cfg, split = run.cfg, run.cfg.score.split
    sets = {name: read_embeddings(encode_split(folder, run.dataset, split, run.out / "embeddings" / name / split,
                                               cfg.encode))
            for name, folder in models.items()}
    entries = matrix_entries(models, sets, cfg.old.name, run.out / "embeddings", split, cmc)
    independent = next((m.name for m in cfg.new if method_of(m).role is Role.INDEPENDENT), None)
    roles = roles_of(models[cfg.old.name], independent)
    pairs = {"all": None, "models": model_pairs(entries), "counterparts": counterpart_pairs(entries)}[cfg.score.pairs]
    return score_and_report(entries, roles, cfg.score, run.out / "report", run.context, pairs)

