"""How sure a criterion cell is: a paired bootstrap over the queries of the difference
``M(q, g) - M(r, r)`` between a pair and its reference (design notes, section 3), and the
verdict it supports.

The two pairs are scored on the same query images (matched by id), so each query contributes one
difference ``d_i = m_i(q, g) - m_i(r, r)`` of its per-query metric (top-1 hit, average
precision); resampling the queries with replacement and taking the mean of ``d`` each time gives
the percentile interval of the difference of means. The gallery is held fixed: the interval says
how much the verdict depends on which queries were asked, not on which images were stored.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.data.embeddings import positions

MET, NOT_MET, WITHIN_NOISE, NO_QUERIES = "met", "not met", "within noise", "no queries"
PER_QUERY_KEYS = {"top1": "top1", "map": "ap"}  # criterion metric -> its per-query array (retrieval.ranking_metrics)


@dataclass(frozen=True)
class Interval:
    """The observed difference of means and its bootstrap interval."""

    delta: float
    low: float
    high: float

    @property
    def verdict(self) -> str:
        """``met`` when the whole interval is above 0, ``not met`` when it is at or below 0,
        ``within noise`` when it holds 0; ``no queries`` when no query had both values."""
        if self.delta != self.delta:
            return NO_QUERIES
        if self.low > 0:
            return MET
        if self.high <= 0:
            return NOT_MET
        return WITHIN_NOISE


def paired_interval(values: np.ndarray, reference: np.ndarray, resamples: int = 1000, level: float = 0.95,
                    seed: int = 0, chunk: int = 64) -> Interval:
    """The mean of ``values - reference`` over the queries where both are defined, and the
    ``level`` percentile interval of that mean over ``resamples`` seeded resamples of those
    queries (drawn ``chunk`` resamples at a time, so that memory stays ``chunk x queries``)."""
    values, reference = np.asarray(values, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if values.shape != reference.shape:
        raise ValueError(f"paired values of {values.shape} and {reference.shape} queries")
    differences = (values - reference)[~(np.isnan(values) | np.isnan(reference))]
    if len(differences) == 0:
        return Interval(float("nan"), float("nan"), float("nan"))
    generator = np.random.default_rng(seed)
    means = np.concatenate([differences[generator.integers(0, len(differences), (min(chunk, resamples - start),
                                                                                 len(differences)))].mean(axis=1)
                            for start in range(0, resamples, chunk)])
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return Interval(float(differences.mean()), float(low), float(high))


def aligned(ids: np.ndarray, reference_ids: np.ndarray, reference: np.ndarray, where: str) -> np.ndarray:
    """``reference``'s per-query values reordered to the query order ``ids`` (the two pairs'
    query sets must hold the same images)."""
    if len(ids) != len(reference_ids) or set(ids.tolist()) != set(reference_ids.tolist()):
        raise ValueError(f"{where}: the pair and its reference were scored on different query images "
                         f"({len(ids)} and {len(reference_ids)} queries)")
    return reference[positions(reference_ids, ids, where)]


def format_difference(delta: float, low: float, high: float) -> str:
    """A difference of metrics and its interval in points of %: ``+1.71 [+0.94, +2.59]``."""
    return f"{100 * delta:+.2f} [{100 * low:+.2f}, {100 * high:+.2f}]"
