"""Backfill orders (pipeline.lineage.orders): permutations, the oracle's use of the new vectors,
and a predictor that reads the parent vectors alone."""

import numpy as np
import pandas as pd

import pytest

from pipeline.lineage.backfill import gap_closed, random_order, share_for_gain, stratified_order
from pipeline.lineage.files import recommended_orders
from pipeline.lineage.metrics import Verdict
from pipeline.lineage.orders import (
    benefit,
    class_centers,
    fit_benefit_predictor,
    margins,
    oracle_order,
    predicted_order,
)
from pipeline.score.criteria import Decision


def _lineage(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, parent vectors and new vectors: the new model separates the classes; the parent
    blurs classes 0 and 1 (its items of those classes sit between their centers)."""
    labels = rng.integers(0, 4, size)
    centers = np.eye(4, 8) * 3
    new = centers[labels] + rng.normal(scale=0.5, size=(size, 8))
    parent = new.copy()
    blurred = labels < 2
    parent[blurred] = (centers[0] + centers[1]) / 2 + rng.normal(scale=0.5, size=(blurred.sum(), 8))
    return labels, parent, new


def test_every_order_is_a_permutation_of_the_gallery():
    rng = np.random.default_rng(0)
    labels, parent, new = _lineage(rng, 300)
    centers = class_centers(new, labels, 4)
    predictor = fit_benefit_predictor(parent, new, labels, 4)
    for order in (random_order(300, 1), stratified_order(parent, class_centers(parent, labels, 4), 1),
                  predicted_order(predictor, parent), oracle_order(parent, new, labels, centers)):
        assert sorted(order.tolist()) == list(range(300))


def test_margins_and_benefit_by_hand():
    centers = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert np.allclose(margins(np.array([[1.0, 0.0], [1.0, 1.0]]), np.array([0, 1]), centers), [1.0, 0.0])
    # an item of class 1 whose parent vector sits on class 0 and whose new vector on class 1 gains 2
    assert np.allclose(benefit(np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]]), np.array([1]), centers), [2.0])


def test_the_oracle_and_the_predictor_put_the_blurred_classes_first():
    rng = np.random.default_rng(1)
    train_labels, train_parent, train_new = _lineage(rng, 2000)
    labels, parent, new = _lineage(rng, 400)
    blurred = np.flatnonzero(labels < 2)
    oracle = oracle_order(parent, new, labels, class_centers(train_new, train_labels, 4))
    predicted = predicted_order(fit_benefit_predictor(train_parent, train_new, train_labels, 4), parent)
    for order in (oracle, predicted):
        first = set(order[: len(blurred)].tolist())
        assert len(first & set(blurred.tolist())) > 0.9 * len(blurred)
    assert len(set(random_order(400, 0)[: len(blurred)].tolist()) & set(blurred.tolist())) < 0.7 * len(blurred)


def test_the_share_for_95_percent_of_the_gain_is_the_first_that_reaches_it_on_every_metric():
    curve = pd.DataFrame({"share": [0, 0.25, 0.5, 0.75, 1.0], "top1": [0.50, 0.60, 0.68, 0.695, 0.70],
                          "map": [0.40, 0.50, 0.59, 0.60, 0.60]})
    assert share_for_gain(curve, ["map"]) == 0.5     # 0.40 + 0.95 x 0.20 = 0.59
    assert share_for_gain(curve, ["top1"]) == 0.75   # 0.50 + 0.95 x 0.20 = 0.69
    assert share_for_gain(curve, ["top1", "map"]) == 0.75
    flat = curve.assign(map=0.40)  # no gain on one metric: no share to name, not 0
    assert np.isnan(share_for_gain(flat, ["top1", "map"])) and share_for_gain(flat, ["top1"]) == 0.75
    assert np.isnan(share_for_gain(curve.assign(top1=np.nan), ["top1"]))


def test_the_summary_names_the_order_chosen_on_the_selection_rows_and_its_share_on_the_scored_split():
    verdict = Verdict("v2", "v1", Decision.BACKFILL, "v2 -> v1", {"share_for_95pct_gain/predicted": 0.5},
                      backfill_order="predicted", order_chosen="the largest map area among the orders that beat random")
    [line] = recommended_orders([verdict])
    assert "in the **predicted** order (the largest map area among the orders that beat random)" in line
    assert "on the scored split 50% of the gallery re-encoded gives 95 % of the gain" in line


def test_the_gap_closed_is_undefined_when_the_oracle_does_not_beat_random():
    assert gap_closed(0.86, 0.85, 0.87) == pytest.approx(0.5)
    assert np.isnan(gap_closed(0.8581, 0.8764, 0.8700))  # v2's top-1 at 3bebe1a: the oracle below random
    assert np.isnan(gap_closed(0.85, 0.85, 0.85))
