"""compat-embed's library, laid out as the data flows:

    data/     the on-disk contracts (datasets of id, image, label; embeddings sets), importers, decoding
    model/    networks, heads, transformations, the typed model card and artifact folders
    compat/   the training math, free of Ray: the method catalogue, losses, objectives,
              old-space statistics, the optimisation step
    train/    Ray Train: the one driver and epoch loop, compatible training, CMC, validation
    encode/   Ray Data: a split encoded by a model; embeddings mapped through a transformation
    score/    the metrics, free of Ray: one pair's retrieval metrics, the criteria, the matrix,
              the report files and MLflow run, the scenario tables
    lineage/  a lineage of models: registry, AC/AM, backfill curves, verdicts, its report
    flows/    the orders of steps: the embedded pipeline, the scenarios

beside ``config`` (typed, validated configs, one module per stage), ``runtime`` (Ray and logging), ``tracking`` (MLflow
helpers), ``names`` and ``atomic`` (safe names and files written through a rename).
"""
