"""The embedded pipeline: ingest -> old model -> statistics -> new models -> encode -> score;
and a lineage: models trained one after the other, registered, then reported (``run_lineage``).

Every step calls the same library function as its job; this module only orders them and
decides where each output lives under ``output_dir``:

    models/<name>/              model artifacts (weights + card), and CMC artifacts (transformations + card)
    stats/<name>.npz            old-space statistics of each new model
    embeddings/<name>/<split>/  embeddings Parquet
    report/                     report.parquet, report.csv, heatmap.png, entries.json (what each
                                matrix entry is: its base model, transformation, counterpart)
    ray/                        Ray Train storage (checkpoints)
    mlflow.db, mlartifacts/     the MLflow store (unless a tracking URI is configured)

A lineage (``run_lineage``) trains into the same ``models/``, ``stats/``, ``embeddings/`` and
``ray/`` folders, then reports from the registry's versions under ``registry/`` (their
downloaded artifacts, embeddings and ``report/``: ``pipeline.lineage.report``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from pipeline.compat.methods import Role
from pipeline.config import CmcConfig, EncodeConfig, PipelineConfig, TrainConfig
from pipeline.data.dataset import read_dataset_info
from pipeline.data.embeddings import read_embeddings
from pipeline.data.importers import ensure_dataset
from pipeline.encode.mapped import matrix_entries
from pipeline.encode.split import encode_split
from pipeline.runtime import runs_at_once
from pipeline.score.entries import counterpart_pairs
from pipeline.score.scoring import score_and_report
from pipeline.train.cross_model import fit_cmc
from pipeline.train.inputs import stats_for_model, train_split_embeddings
from pipeline.train.training import fit_model, run_resources

log = logging.getLogger(__name__)
ENTRIES_FILE = "entries.json"
T = TypeVar("T")


@dataclass(frozen=True)
class PipelineResult:
    report_dir: Path
    tracking_uri: str
    matrix_text: str
    seconds: float


def encoding_options(encode: EncodeConfig) -> dict:
    """``encode_split``'s keyword arguments from an ``encode:`` block."""
    return {"batch_size": encode.batch_size, "num_actors": encode.num_actors, "cpus_per_actor": encode.cpus_per_actor,
            "threads_per_actor": encode.threads_per_actor, "use_gpu": encode.use_gpu, "on_bad_rows": encode.on_bad_rows}


def _side_by_side(fit: Callable[[T], Path], configs: list[T], at_once: int, what: str) -> list[Path]:
    """``fit`` of every config, ``at_once`` of them at a time (each fit waits on its own Ray Train
    run, so threads are enough); results in the order of ``configs``, the first error raised."""
    log.info("pipeline: %d %s, %d at once", len(configs), what, at_once)
    with ThreadPoolExecutor(max_workers=at_once) as pool:
        return list(pool.map(fit, configs))


def run_pipeline(cfg: PipelineConfig) -> PipelineResult:
    started = time.perf_counter()
    out = Path(cfg.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    tracking_uri, experiment = cfg.tracking_uri(), cfg.mlflow.experiment
    tag = time.strftime("%Y%m%d-%H%M%S")
    dataset = ensure_dataset(cfg.data, cfg.old.seed)
    info = read_dataset_info(dataset)
    log.info("pipeline: dataset %s, %d classes, %s rows", dataset, len(info.classes), info.rows)
    encode_options = encoding_options(cfg.encode)
    common = dict(storage_path=out / "ray", tracking_uri=tracking_uri, experiment=experiment)

    old_dir = fit_model(cfg.old, dataset, out / "models" / cfg.old.name, run_name=f"{cfg.old.name}-{tag}", **common)
    old_embeddings = None
    stats: dict[str, Path | None] = {}
    for new in cfg.new:
        stats[new.name] = None
        if new.method_spec.needs_statistics:
            if old_embeddings is None:
                old_embeddings = train_split_embeddings(old_dir, dataset, out / "embeddings" / cfg.old.name / "train",
                                                      **encode_options)
            stats[new.name] = stats_for_model(new, old_dir, old_embeddings, dataset, out / "stats" / f"{new.name}.npz")

    def fit_new(new: TrainConfig) -> Path:
        return fit_model(new, dataset, out / "models" / new.name, run_name=f"{new.name}-{tag}",
                         old_model=old_dir if new.needs_old_model else None, stats=stats[new.name],
                         parent=cfg.old.name, **common)

    per_run = {key: max(run_resources(new)[key] for new in cfg.new) for key in ("CPU", "GPU")}
    fitted = _side_by_side(fit_new, cfg.new, runs_at_once(per_run, cfg.concurrent_fits), "new models")
    models = {cfg.old.name: old_dir, **dict(zip([new.name for new in cfg.new], fitted))}

    for name in dict.fromkeys(([cfg.old.name] + [c.new_model for c in cfg.cmc]) if cfg.cmc else []):
        # encoded here once, so that CMC fits running side by side only read them
        train_split_embeddings(models[name], dataset, out / "embeddings" / name / "train", **encode_options)

    def fit_transformations(c: CmcConfig) -> Path:
        return fit_cmc(c, old_dir, models[c.new_model], dataset, out / "models" / c.name, work_dir=out,
                       run_name=f"{c.name}-{tag}", **common, **encode_options)

    at_once = runs_at_once({"CPU": max((c.cpus_per_worker for c in cfg.cmc), default=1)}, cfg.concurrent_fits)
    cmc = dict(zip([c.name for c in cfg.cmc], _side_by_side(fit_transformations, cfg.cmc, at_once, "CMC fits")))

    sets = {}
    for name, model_dir in models.items():
        folder = encode_split(model_dir, dataset, cfg.encode.split, out / "embeddings" / name / cfg.encode.split,
                              **encode_options)
        sets[name] = read_embeddings(folder)
    entries = matrix_entries(models, sets, cfg.old.name, out / "embeddings", cfg.encode.split, cmc)
    independent = next((m.name for m in cfg.new if m.method_spec.role is Role.INDEPENDENT), None)
    report = score_and_report({name: e.embeddings for name, e in entries.items()}, old_model=old_dir,
                              independent=independent, out_dir=out / "report", tracking_uri=tracking_uri,
                              experiment=experiment, topk=tuple(cfg.score.topk), chunk=cfg.score.query_chunk,
                              references={name: e.reference for name, e in entries.items()},
                              transforms={name: e.transform for name, e in entries.items()},
                              pairs=counterpart_pairs(entries) if cfg.score.pairs == "counterparts" else None)
    (out / "report" / ENTRIES_FILE).write_text(json.dumps(
        {name: {"reference": e.reference, "transform": e.transform, "counterpart": e.counterpart, "base": e.base}
         for name, e in entries.items()}, indent=1))
    return PipelineResult(report_dir=out / "report", tracking_uri=tracking_uri, matrix_text=report,
                          seconds=time.perf_counter() - started)


