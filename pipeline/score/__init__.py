"""Scoring: one pair's retrieval metrics (``retrieval``), one pair scored (``pairs``), the criteria
(``criteria``), matrix entries (``entries``), every pair scored into a table (``matrix``; in Ray
tasks across nodes, ``on_ray``, the only module here that imports Ray), negative flips (``flips``),
approximate indexes on a gallery mixing two models (``indexes``), the report files and MLflow run
(``report``), and the scenario tables folded over seeds (``results``)."""
