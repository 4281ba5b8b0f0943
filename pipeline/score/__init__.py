"""Scoring, free of Ray: one pair's retrieval metrics (``retrieval``), the criteria (``criteria``), matrix
entries (``entries``), every pair scored into a table (``matrix``), negative flips (``flips``), approximate
indexes on a gallery mixing two models (``indexes``), the report files and MLflow run
(``report``), and the scenario tables folded over seeds (``results``)."""
