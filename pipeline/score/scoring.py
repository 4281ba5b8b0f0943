"""The score step: every pair of embedding sets into the report table, files and MLflow run."""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.atomic import write_atomic
from pipeline.model.artifacts import read_model_card
from pipeline.score.matrix import Gallery, score_all_pairs
from pipeline.score.report import format_matrix, heatmap, log_report, write_tables
from pipeline.score.retrieval import IndexSpec

log = logging.getLogger(__name__)


def score_and_report(sets: dict[str, Gallery], *, old_model: str | Path, independent: str | None,
                     out_dir: str | Path, tracking_uri: str, experiment: str, topk: tuple[int, ...] = (1, 5),
                     chunk: int = 1024, references: dict[str, str] | None = None,
                     transforms: dict[str, str] | None = None, pairs: list[tuple[str, str]] | None = None,
                     index: IndexSpec = IndexSpec(), full_ranking: bool = True) -> str:
    """Score ``pairs`` of ``sets`` (default all), write the report to ``out_dir``, log it; returns
    the printed matrix. Each pair's row is kept in ``out_dir/pairs``, so that a rerun after a
    kill scores only the pairs not done yet.

    ``references`` and ``transforms`` describe transformed entries (``pipeline.encode.mapped``).
    """
    old_card = read_model_card(old_model)
    for role, name in (("old", old_card.name), ("independent", independent)):
        if name is not None and name not in sets:
            raise ValueError(f"the {role} model {name!r} has no embeddings among {sorted(sets)}")
    order = list(sets)
    table = score_all_pairs(sets, old_classes=old_card.classes, independent=independent, old=old_card.name,
                            topk=topk, chunk=chunk, references=references, transforms=transforms,
                            pairs=pairs, index=index, full_ranking=full_ranking, pair_dir=Path(out_dir) / "pairs")
    shown = tuple(metric for metric in ("top1", "map") if metric in table.columns)  # no mAP without the full ranking
    files = list(write_tables(table, out_dir).values()) + [heatmap(table, order, Path(out_dir) / "heatmap.png", shown)]
    text = "\n\n".join(format_matrix(table, order, metric) for metric in shown)
    write_atomic(Path(out_dir) / "matrix.txt", lambda temporary: temporary.write_text(text + "\n"))
    files.append(Path(out_dir) / "matrix.txt")
    run_id = log_report(table, order, files, tracking_uri, experiment)
    log.info("score: report in %s, MLflow run %s", out_dir, run_id)
    return text
