"""How sure a criterion cell is: a paired bootstrap over the queries of the difference
``M(q, g) - M(r, r)`` between a pair and its reference (docs/design.md, 'The metrics'), and the
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


def _resampled_means(columns: np.ndarray, resamples: int, seed: int, chunk: int) -> np.ndarray:
    """[resamples, k]: the means of ``columns`` ([Q, k]) over ``resamples`` seeded resamples of its
    rows with replacement, the same rows for every column (drawn ``chunk`` resamples at a time, so
    that memory stays ``chunk x Q``)."""
    generator, rows = np.random.default_rng(seed), len(columns)
    return np.concatenate([columns[generator.integers(0, rows, (min(chunk, resamples - start), rows))].mean(axis=1)
                           for start in range(0, resamples, chunk)])


def _percentiles(means: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def paired_interval(values: np.ndarray, reference: np.ndarray, resamples: int = 1000, level: float = 0.95,
                    seed: int = 0, chunk: int = 64) -> Interval:
    """The mean of ``values - reference`` over the queries where both are defined, and the
    ``level`` percentile interval of that mean over ``resamples`` seeded resamples of those
    queries."""
    values, reference = np.asarray(values, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if values.shape != reference.shape:
        raise ValueError(f"paired values of {values.shape} and {reference.shape} queries")
    differences = (values - reference)[~(np.isnan(values) | np.isnan(reference))]
    if len(differences) == 0:
        return Interval(float("nan"), float("nan"), float("nan"))
    means = _resampled_means(differences[:, None], resamples, seed, chunk)[:, 0]
    return Interval(float(differences.mean()), *_percentiles(means, level))


def ratio_interval(numerator: np.ndarray, denominator: np.ndarray, resamples: int = 1000, level: float = 0.95,
                   seed: int = 0, chunk: int = 64) -> Interval:
    """``mean(numerator) / mean(denominator)`` over the queries where both are defined (an update
    gain: the gain's and the upgrade's per-query differences), and the ``level`` percentile
    interval of that ratio over seeded resamples of those queries; NaN unless the denominator's
    mean is above 0 (no upgrade: nothing to gain)."""
    numerator, denominator = np.asarray(numerator, dtype=np.float64), np.asarray(denominator, dtype=np.float64)
    keep = ~(np.isnan(numerator) | np.isnan(denominator))
    columns = np.stack([numerator[keep], denominator[keep]], axis=1)
    if not keep.any() or columns[:, 1].mean() <= 0:
        return Interval(float("nan"), float("nan"), float("nan"))
    means = _resampled_means(columns, resamples, seed, chunk)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = means[:, 0] / means[:, 1]
    return Interval(float(columns[:, 0].mean() / columns[:, 1].mean()), *_percentiles(ratios, level))


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
