"""Scoring, free of Ray: one pair's retrieval metrics (``retrieval``), the criteria (``criteria``), matrix
entries (``entries``), every pair scored into a table (``matrix``), the report files and MLflow run
(``report``), and the scenario tables folded over seeds (``results``)."""
