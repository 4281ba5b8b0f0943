"""Fitting on Ray Train: one driver (``driver``) and one epoch loop (``loop``) for compatible
training (``training``) and cross-model compatibility (``cross_model``); what a fit reads besides
images (``inputs``), checkpoints (``checkpoints``) and per-epoch validation (``validation``)."""
