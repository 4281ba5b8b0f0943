"""Scoring, free of Ray: what the rest of the project uses is exported here, grouped by module.

A cell is computed one way: ``score_pair`` for embedding sets (a summary, overall and per query
subset), ``per_query_metrics`` then ``summarize`` for arrays held in memory; every pair of a
matrix by ``score_all_pairs`` (in Ray tasks across nodes: ``pipeline.score.on_ray``, the only
module here that imports Ray, which ``matrix`` reaches for ``in_ray``), written and logged by
``score_and_report``. The modules: one pair's retrieval metrics (``retrieval``), one pair scored
(``pairs``), the criteria (``criteria``) and intervals (``uncertainty``), matrix entries
(``entries``), the matrix (``matrix``), negative flips (``flips``), approximate indexes on a
gallery mixing two models (``indexes``), the report files and MLflow run (``report``), and the
scenario tables folded over seeds (``results``, imported on its own by the scenarios' flow: it
reads the method catalogue, which loads torch).
"""

from pipeline.score.pairs import (  # one pair scored: its summary (``score_pair``), of sets read or on disk
    Gallery,
    score_pair,
)
from pipeline.score.retrieval import (  # per-query values of arrays in memory, and the vector helpers
    normalize,
    per_query_metrics,
    search,
    summarize,
    unit32,
)
from pipeline.score.criteria import (  # the compatibility criterion and its decision per pair
    CRITERION_METRICS,
    Decision,
    beats,
    judged_metrics,
    pair_decision,
    pair_row,
    pair_verdict,
    update_gain,
)
from pipeline.score.uncertainty import (  # paired bootstrap intervals and their verdicts
    MET,
    NOT_MET,
    PER_QUERY_KEYS,
    WITHIN_NOISE,
    Interval,
    format_difference,
    paired_interval,
)
from pipeline.score.entries import (  # the matrix's entries and roles
    MatrixEntry,
    MatrixRoles,
    counterpart_pairs,
    model_pairs,
)
from pipeline.score.matrix import (  # every pair scored into a table, and one metric's matrix
    matrix,
    score_all_pairs,
)
from pipeline.score.report import (  # the report: files, MLflow run, the decision's words
    REPORT_FILE,
    VERDICTS_FILE,
    cell_metrics,
    decision_line,
    decisions_markdown,
    heatmap,
    interval_cells,
    log_metrics,
    read_table,
    roles_of,
    row_metrics,
    save_figure,
    score_and_report,
    verdicts_markdown,
    write_tables,
)
from pipeline.score.indexes import (  # approximate indexes on a gallery mixing two models
    index_advice,
    index_summary,
    mixed_gallery,
    mixed_index_table,
)

__all__ = [
    "CRITERION_METRICS", "MET", "NOT_MET", "PER_QUERY_KEYS", "REPORT_FILE", 
    "VERDICTS_FILE", "WITHIN_NOISE", "Decision", "Gallery", "Interval", "MatrixEntry", "MatrixRoles", 
    "beats", "cell_metrics", "counterpart_pairs", "decision_line", "decisions_markdown",
    "format_difference", "heatmap", "index_advice", "index_summary", "interval_cells",
    "judged_metrics", "log_metrics", "matrix", "mixed_gallery", "mixed_index_table", "model_pairs",
    "normalize", "pair_decision", "pair_row", "pair_verdict", "paired_interval", "per_query_metrics", "read_table",
    "roles_of", "row_metrics", "save_figure", "score_all_pairs",
    "score_and_report", "score_pair", "search", "summarize", "unit32", "update_gain", "verdicts_markdown",
    "write_tables",
]
