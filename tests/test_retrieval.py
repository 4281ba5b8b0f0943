"""Retrieval metrics against a brute-force numpy/sklearn reference."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score

from pipeline.compat_matrix import add_criteria
from pipeline.retrieval import per_query_metrics, summarize
from tests.reference import reference


@pytest.mark.parametrize("same_images", [True, False])
def test_matches_brute_force(same_images):
    rng = np.random.default_rng(1)
    gallery = rng.normal(size=(300, 16)).astype(np.float32)
    glabels = rng.integers(0, 6, 300)
    gids = np.array([f"g{i}" for i in range(300)], dtype=object)
    if same_images:
        query, qlabels, qids = gallery + rng.normal(scale=0.5, size=gallery.shape).astype(np.float32), glabels, gids
    else:
        query = rng.normal(size=(120, 16)).astype(np.float32)
        qlabels, qids = rng.integers(0, 6, 120), np.array([f"q{i}" for i in range(120)], dtype=object)
    ours = per_query_metrics(query, qlabels, gallery, glabels, qids, gids, chunk=50)
    expected = reference(query, qlabels, gallery, glabels, qids, gids)
    for key in expected:
        assert np.allclose(ours[key], expected[key], atol=1e-5), key


def test_ties_count_as_one_threshold_like_sklearn():
    gallery = np.array([[1, 0], [1, 0], [0, 1], [1, 0]], np.float32)  # three identical vectors
    glabels = np.array([0, 1, 0, 1])
    ours = per_query_metrics(np.array([[1, 0]], np.float32), np.array([0]), gallery, glabels)
    relevant = glabels == 0
    assert ours["ap"][0] == pytest.approx(average_precision_score(relevant, gallery @ np.array([1, 0])))


def test_dimension_mismatch_is_refused():
    with pytest.raises(ValueError, match="query dimension 3 differs from gallery dimension 2"):
        per_query_metrics(np.ones((2, 3)), np.zeros(2), np.ones((2, 2)), np.zeros(2))


def test_summarize_by_subset_and_nan_for_no_relevant():
    per_query = {"top1": np.array([1.0, 0.0, 1.0]), "ap": np.array([0.5, np.nan, 1.0])}
    assert summarize(per_query) == {"top1": pytest.approx(2 / 3), "map": 0.75}
    assert summarize(per_query, np.array([False, True, False]))["map"] != summarize(per_query)["map"]


def test_criterion_and_update_gain():
    rows = []
    values = {("old", "old"): 0.80, ("new", "old"): 0.85, ("new", "new"): 0.88, ("ind", "ind"): 0.90,
              ("ind", "old"): 0.10, ("old", "new"): 0.5, ("old", "ind"): 0.1, ("new", "ind"): 0.8, ("ind", "new"): 0.8}
    for (q, g), v in values.items():
        rows.append({"query_model": q, "gallery_model": g, "top1": v, "map": v})
    table = add_criteria(pd.DataFrame(rows), independent="ind", old="old").set_index(["query_model", "gallery_model"])
    assert bool(table.loc[("new", "old"), "compatible_top1"]) is True    # 0.85 > 0.80
    assert bool(table.loc[("ind", "old"), "compatible_top1"]) is False
    assert pd.isna(table.loc[("old", "old"), "compatible_top1"])
    assert table.loc[("new", "old"), "update_gain_top1"] == pytest.approx((0.85 - 0.80) / (0.90 - 0.80))
