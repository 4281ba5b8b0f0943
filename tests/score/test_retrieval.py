"""Retrieval metrics against a brute-force numpy/sklearn reference."""

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score

from pipeline.config import IndexConfig, ScoreConfig, ivf_lists
from pipeline.data.embeddings import Shard
from pipeline.score.entries import MatrixEntry, MatrixRoles
from pipeline.score.matrix import add_update_gains
from pipeline.score.retrieval import (
    average_precisions,
    counts_at_least,
    normalize,
    own_positions,
    per_query_metrics,
    precisions_of_parts,
    recall_at_k,
    relevant_scores,
    score_queries,
    search,
    summarize,
)
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
    assert summarize(per_query, np.array([True, True, False])) == {"top1": 0.5, "map": 0.5}
    only_no_relevant = summarize(per_query, np.array([False, True, False]))  # its AP is undefined, not 0
    assert only_no_relevant["top1"] == 0.0 and math.isnan(only_no_relevant["map"])


def test_update_gain_against_the_old_gallery():
    rows = []
    values = {("old", "old"): 0.80, ("new", "old"): 0.85, ("new", "new"): 0.88, ("ind", "ind"): 0.90,
              ("ind", "old"): 0.10, ("old", "new"): 0.5, ("old", "ind"): 0.1, ("new", "ind"): 0.8, ("ind", "new"): 0.8}
    for (q, g), v in values.items():
        rows.append({"query_model": q, "gallery_model": g, "top1": v, "map": v})
    table = add_update_gains(pd.DataFrame(rows), independent="ind", old="old").set_index(["query_model",
                                                                                          "gallery_model"])
    assert pd.isna(table.loc[("old", "old"), "update_gain_top1"]) and pd.isna(table.loc[("new", "ind"),
                                                                                          "update_gain_top1"])
    assert table.loc[("new", "old"), "update_gain_top1"] == pytest.approx((0.85 - 0.80) / (0.90 - 0.80))


def _gallery(rng, size=400, dim=16, classes=5):
    vectors = rng.normal(size=(size, dim)).astype(np.float32)
    return np.array([f"g{i}" for i in range(size)], dtype=object), rng.integers(0, classes, size), vectors


def _shards(ids, labels, vectors, rows):
    return lambda: [Shard(start, ids[start : start + rows], labels[start : start + rows], vectors[start : start + rows])
                    for start in range(0, len(ids), rows)]


@pytest.mark.parametrize("rows", [1, 37, 400])
def test_sharded_gallery_scores_as_one_in_memory(rows):
    """Streaming shards (top-k merged across shards, full ranking chunked) changes no number,
    and each query's own image is excluded in whichever shard holds it."""
    rng = np.random.default_rng(3)
    ids, labels, vectors = _gallery(rng)
    query = vectors[::4] + rng.normal(scale=0.3, size=vectors[::4].shape).astype(np.float32)
    whole = per_query_metrics(query, labels[::4], vectors, labels, ids[::4], ids, topk=(1, 5))
    sharded = score_queries(query, labels[::4], ids[::4], _shards(ids, labels, vectors, rows), len(ids), topk=(1, 5),
                            chunk=7)
    for key in whole:
        assert np.allclose(whole[key], sharded[key]), key
    neighbours = search(query, ids[::4], _shards(ids, labels, vectors, rows), 5)
    assert not (neighbours.positions == np.arange(0, 400, 4)[:, None]).any()  # own image never found


def test_ivf_probing_every_list_is_exact_and_fewer_lists_report_recall():
    rng = np.random.default_rng(4)
    ids, labels, vectors = _gallery(rng, size=2000)
    query = rng.normal(size=(100, 16)).astype(np.float32)
    exact = search(query, None, _shards(ids, labels, vectors, 500), 10)
    everything = search(query, None, _shards(ids, labels, vectors, 500), 10, IndexConfig(kind="ivf", nlist=16, nprobe=16))
    assert recall_at_k(everything, exact) == pytest.approx(1.0)
    few = search(query, None, _shards(ids, labels, vectors, 500), 10, IndexConfig(kind="ivf", nlist=16, nprobe=1))
    assert 0 < recall_at_k(few, exact) < 1


def test_ivf_excludes_own_images():
    rng = np.random.default_rng(5)
    ids, labels, vectors = _gallery(rng, size=600)
    found = search(vectors[:50], ids[:50], _shards(ids, labels, vectors, 200), 3, IndexConfig(kind="ivf", nlist=8, nprobe=8))
    assert not (found.positions == np.arange(50)[:, None]).any()
    assert (found.positions >= 0).all()


def test_ivf_scoring_reports_its_recall_against_flat_search():
    from pipeline.data.embeddings import EmbeddingSet
    from pipeline.score.pairs import score_pair

    rng = np.random.default_rng(6)
    ids, labels, vectors = _gallery(rng, size=1500)
    embeddings = EmbeddingSet("g", "m-1", "m", ids, labels, vectors, ["a", "b", "c", "d", "e"])
    flat = score_pair(embeddings, embeddings, None, ScoreConfig(topk=[1, 5]))
    ivf = score_pair(embeddings, embeddings, None, ScoreConfig(index=IndexConfig(kind="ivf", nlist=32, nprobe=32)))
    assert "ivf_recall_at_k" not in flat and ivf["ivf_recall_at_k"] == pytest.approx(1.0)
    assert ivf["top5"] == pytest.approx(flat["top5"]) and ivf["map"] == flat["map"]
    coarse = score_pair(embeddings, embeddings, None, ScoreConfig(index=IndexConfig(kind="ivf", nlist=32, nprobe=1)))
    assert coarse["ivf_recall_at_k"] < 1


def test_top_k_only_scoring_leaves_map_out_everywhere():
    from pipeline.data.embeddings import EmbeddingSet
    from pipeline.score.matrix import score_all_pairs

    rng = np.random.default_rng(7)
    ids, labels, vectors = _gallery(rng, size=300)
    sets = {name: EmbeddingSet(name, f"{name}-1", name, ids, labels, vectors + rng.normal(scale=0.1, size=vectors.shape),
                               ["a", "b", "c", "d", "e"]) for name in ("old", "new", "ind")}
    entries = {name: MatrixEntry.plain(name, embeddings, "old") for name, embeddings in sets.items()}
    table = score_all_pairs(entries, MatrixRoles(old="old", old_classes=["a", "b"], independent="ind"),
                            ScoreConfig(full_ranking=False))
    assert "map" not in table.columns and "map_at_r" not in table.columns
    assert {"top1", "top5", "verdict_top1", "decision", "update_gain_top1", "top1_unseen"} <= set(table.columns)


def test_average_precision_from_shards_parts_equals_the_full_ranking():
    """Each shard's relevant scores and the counts of items scoring at least as high, merged,
    give the AP and AP@R of the whole ranking, ties and own images included."""
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 4, 90)
    vectors = np.round(rng.normal(size=(90, 6)), 1)  # rounded: tied scores
    vectors[10] = vectors[11]                         # and identical items
    ids = np.array([f"g{i}" for i in range(90)], dtype=object)
    queries, query_labels, query_ids = vectors[:30], labels[:30], ids[:30]
    shards = [Shard(start, ids[start : start + 30], labels[start : start + 30], vectors[start : start + 30])
              for start in (0, 30, 60)]
    ap, ap_at_r = average_precisions(queries, query_labels, query_ids, lambda: shards, 90)
    unit, own = normalize(queries), own_positions(query_ids, 30, lambda: shards)
    parts = [relevant_scores(unit, query_labels, own, shard, budget_bytes=17 * 30 * 7) for shard in shards]
    relevant = [np.sort(np.concatenate([part[row] for part in parts])) for row in range(30)]
    positions = [sum(counts[row] for counts in (counts_at_least(unit, own, shard, relevant) for shard in shards))
                 for row in range(30)]
    merged_ap, merged_at_r = precisions_of_parts(relevant, positions)
    np.testing.assert_allclose(merged_ap, ap, rtol=0, atol=1e-12)
    np.testing.assert_allclose(merged_at_r, ap_at_r, rtol=0, atol=1e-12)


def test_one_ivf_rule_about_four_square_roots_with_39_points_a_list():
    assert ivf_lists(1_000_000) == 4000 and ivf_lists(10_000) == 256  # 4 sqrt(n), then n // 39
    assert ivf_lists(10) == 1 and ivf_lists(1_000_000, configured=64) == 64
