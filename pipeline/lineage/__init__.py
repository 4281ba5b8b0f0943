"""A lineage v1 -> v2 -> ...: trained and registered (``chain``, ``registry``), its metrics and verdicts
(``metrics``), backfill curves (``backfill``), and its report (``report``, ``files``, ``runs``: its MLflow runs)."""
