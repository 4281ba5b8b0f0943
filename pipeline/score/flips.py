"""Negative flips: the queries an upgrade breaks (Yan et al., "Positive-Congruent Training", CVPR
2021, in retrieval form), free of I/O.

A query flips negatively in a pair ``(q, g)`` when its top-1 neighbour has its label under the
reference pair (``(old, old)``: what the gallery's users get today;
``pipeline.score.matrix.flip_reference``) and not under the pair. The flip rate is the share of
the queries that flip, overall, per query subset and per class (the share of that class's
queries); both pairs are scored on the same query images, matched by id. A verdict may require
the rate to be at most ``ScoreConfig.max_flip_rate``.
"""

from __future__ import annotations

import numpy as np

from pipeline.score.uncertainty import aligned


def negative_flips(hits: np.ndarray, reference_hits: np.ndarray) -> np.ndarray:
    """Per query: a top-1 hit under the reference pair and a miss under the pair."""
    return (np.asarray(reference_hits) == 1) & (np.asarray(hits) == 0)


def flips_of_pair(ids: np.ndarray, hits: np.ndarray, reference_ids: np.ndarray, reference_hits: np.ndarray,
                  where: str) -> np.ndarray:
    """``negative_flips`` of a pair whose queries are ``ids``, the reference's hits taken in that
    order (an error naming ``where`` when the two were scored on different query images)."""
    return negative_flips(hits, aligned(ids, reference_ids, reference_hits, where))


def flip_rate(flips: np.ndarray, mask: np.ndarray | None = None) -> float:
    """The share of the (masked) queries that flip; NaN when no query is left."""
    chosen = flips if mask is None else flips[mask]
    return float(chosen.mean()) if len(chosen) else float("nan")
