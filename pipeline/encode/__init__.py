"""Encoding on Ray Data: a dataset split encoded by a model (``split``), and embeddings sets mapped
through a trained transformation into matrix entries (``mapped``)."""
