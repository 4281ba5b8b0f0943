"""Scoring, free of Ray: what the rest of the project uses is exported here, grouped by module.

A cell is computed one way: ``score_pair`` for embedding sets (a summary, overall and per query
subset), ``per_query_metrics`` then ``summarize`` for arrays held in memory; every pair of a
matrix by ``score_all_pairs`` (in Ray tasks across nodes: ``pipeline.score.on_ray``, the only
module here that imports Ray, which ``matrix`` reaches for ``in_ray``), written and logged by
``score_and_report``. Each name loads its module when first used, so that importing one module
of score/ (a Ray Train worker's validation) loads neither matplotlib nor MLflow.

The modules: one pair's retrieval metrics (``retrieval``), one pair scored (``pairs``), the
criteria (``criteria``) and intervals (``uncertainty``), matrix entries (``entries``), the matrix
(``matrix``), negative flips (``flips``), approximate indexes on a gallery mixing two models
(``indexes``), the report files and MLflow run (``report``), and the scenario tables folded over
seeds (``results``, imported on its own by the scenarios' flow: it reads the method catalogue,
which loads torch).
"""

import importlib
from typing import Any

_EXPORTS: dict[str, tuple[str, ...]] = {
    # one pair scored: its summary (``score_pair``), of sets read or on disk
    "pairs": ("Gallery", "score_pair"),
    # per-query values of arrays in memory, and the vector helpers
    "retrieval": ("normalize", "per_query_metrics", "search", "summarize", "unit32"),
    # the compatibility criterion and its decision per pair
    "criteria": ("CRITERION_METRICS", "Decision", "beats", "judged_metrics", "pair_decision", "pair_row",
        "pair_verdict", "update_gain"),
    # paired bootstrap intervals and their verdicts
    "uncertainty": ("MET", "NOT_MET", "PER_QUERY_KEYS", "WITHIN_NOISE", "Interval", "format_difference",
        "paired_interval"),
    # the matrix's entries and roles
    "entries": ("MatrixEntry", "MatrixRoles", "counterpart_pairs", "model_pairs"),
    # every pair scored into a table, and one metric's matrix
    "matrix": ("matrix", "score_all_pairs"),
    # the report: files, MLflow run, the decision's words
    "report": ("REPORT_FILE", "VERDICTS_FILE", "cell_metrics", "decision_line", "decisions_markdown", "heatmap",
        "interval_cells", "log_metrics", "read_table", "roles_of", "row_metrics", "save_figure", "score_and_report",
        "verdicts_markdown", "write_tables"),
    # approximate indexes on a gallery mixing two models
    "indexes": ("index_advice", "index_summary", "mixed_gallery", "mixed_index_table"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
