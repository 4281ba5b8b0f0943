"""Approximate indexes on a gallery mixing parent and new vectors, against brute force on tiny data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.config import MixedIndexConfig, factory_string
from pipeline.score.indexes import (
    average_precision_at_k,
    index_advice,
    index_summary,
    mixed_index_table,
)


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def _clustered(rng: np.random.Generator, labels: np.ndarray, dim: int, spread: float) -> np.ndarray:
    centers = _unit(rng.standard_normal((labels.max() + 1, dim)))
    return _unit(centers[labels] + spread * rng.standard_normal((len(labels), dim))).astype(np.float32)


def _brute(gallery: np.ndarray, gallery_labels: np.ndarray, queries: np.ndarray, query_labels: np.ndarray,
           k: int) -> tuple[float, float]:
    """Top-1 and mAP@k of exact cosine search, each query's own image (same row) left out."""
    scores = _unit(queries.astype(np.float64)) @ _unit(gallery.astype(np.float64)).T
    np.fill_diagonal(scores, -np.inf)
    ranking = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    top1, precisions = [], []
    for row, ranked in enumerate(ranking):
        hits = gallery_labels[ranked] == query_labels[row]
        relevant = int((gallery_labels == query_labels[row]).sum()) - 1
        top1.append(hits[0])
        precisions.append(sum(hits[: i + 1].mean() for i in range(k) if hits[i]) / min(relevant, k))
    return float(np.mean(top1)), float(np.mean(precisions))


def test_average_precision_at_k_against_its_definition():
    positions = np.array([[3, 0, 2], [1, -1, -1], [4, 5, 6]])
    gallery_labels = np.array([2, 0, 1, 1, 2, 2, 2])
    query_labels = np.array([1, 0, 0])
    relevant = np.array([3, 1, 0])
    ap = average_precision_at_k(positions, gallery_labels, query_labels, relevant)
    assert ap[0] == pytest.approx((1 / 1 + 2 / 3) / 3)  # hits at ranks 1 and 3 of 3 relevant
    assert ap[1] == pytest.approx(1.0)                  # its only relevant item first; missing results no hit
    assert np.isnan(ap[2])                               # no relevant item: no AP


@pytest.fixture(scope="module")
def mixed():
    """A gallery of 600 images in 6 classes whose new vectors are another, tighter encoding of the
    same classes; the new model's queries are the same images."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(6), 100)
    parent, new = _clustered(rng, labels, 16, 0.9), _clustered(rng, labels, 16, 0.5)
    order = rng.permutation(len(labels))
    config = MixedIndexConfig(steps=4, k=5, nlist=8, nprobe=2, pq_bytes=4, hnsw_neighbours=8, ef_search=16,
                              latency_queries=20)
    table = mixed_index_table(parent, new, order, labels, new, labels, np.arange(len(labels)), config)
    return parent, new, labels, order, config, table


def test_the_table_has_every_share_index_and_training(mixed):
    _, _, _, _, config, table = mixed
    assert set(table.share) == {0.0, 0.25, 0.5, 0.75, 1.0}
    per_share = table.groupby("share").apply(lambda rows: sorted(zip(rows["index"], rows.trained_on)),
                                             include_groups=False)
    assert all(rows == sorted([("flat", "-"), ("ivf-flat", "parent"), ("ivf-flat", "mixed"), ("ivf-pq", "parent"),
                               ("ivf-pq", "mixed"), ("hnsw", "-")]) for rows in per_share)
    assert set(table.factory) == {"Flat", "IVF8,Flat", "IVF8,PQ4x8np", "HNSW8"}
    assert table.recall_at_k.between(0, 1).all() and (table.p99_ms >= table.p50_ms).all() and (table["bytes"] > 0).all()
    # IVF-Flat stores the vectors themselves: more bytes than PQ's 4-byte codes
    last = table[table.share == 1.0].set_index(["index", "trained_on"])
    assert last.loc[("ivf-pq", "mixed"), "bytes"] < last.loc[("ivf-flat", "mixed"), "bytes"]


def test_intermediate_shares_equal_a_brute_force_recomputation_of_the_mixed_gallery(mixed):
    parent, new, labels, order, config, table = mixed
    flat = table[table["index"] == "flat"].set_index("share")
    for share in (0.25, 0.75):
        gallery = parent.copy()
        chosen = order[: int(round(share * len(order)))]
        gallery[chosen] = new[chosen]
        top1, map_at_k = _brute(gallery, labels, new, labels, config.k)
        assert flat.loc[share, "top1"] == pytest.approx(top1)
        assert flat.loc[share, "map_at_k"] == pytest.approx(map_at_k)
    # the ends: the parent gallery, then the new model's own
    assert flat.loc[0.0, "top1"] == pytest.approx(_brute(parent, labels, new, labels, config.k)[0])
    assert flat.loc[1.0, "top1"] == pytest.approx(_brute(new, labels, new, labels, config.k)[0])


def test_an_ivf_index_probing_every_list_finds_what_flat_search_finds():
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(4), 50)
    parent, new = _clustered(rng, labels, 8, 0.8), _clustered(rng, labels, 8, 0.4)
    config = MixedIndexConfig(kinds=["ivf-flat"], steps=2, k=5, nlist=4, nprobe=4, latency_queries=5)
    table = mixed_index_table(parent, new, rng.permutation(200), labels, new, labels, np.arange(200), config)
    assert table.recall_at_k.to_numpy() == pytest.approx(1.0)  # trained on either, every list probed: exact


def test_index_settings_that_cannot_be_built_are_named():
    with pytest.raises(ValueError, match="pq_bytes 5 does not divide the embedding dimension 16"):
        factory_string(MixedIndexConfig(pq_bytes=5), "ivf-pq", 16, 1000)
    with pytest.raises(ValueError, match=r"pq_bytes 63 \(0: half the dimension\) does not divide the embedding dim"):
        factory_string(MixedIndexConfig(), "ivf-pq", 127, 1000)
    with pytest.raises(ValueError, match="a gallery of 200 vectors is too small for it"):
        factory_string(MixedIndexConfig(), "ivf-pq", 16, 200)
    with pytest.raises(ValueError, match="nlist 64 is more lists than the gallery's 50 vectors"):
        factory_string(MixedIndexConfig(nlist=64), "ivf-flat", 16, 50)
    assert factory_string(MixedIndexConfig(), "ivf-pq", 128, 10_000) == "IVF256,PQ64x8np"  # 4 sqrt(N) > N / 39
    assert factory_string(MixedIndexConfig(), "ivf-flat", 128, 1_000_000) == "IVF4000,Flat"


def test_the_advice_names_the_smallest_index_holding_recall_and_whether_it_needs_retraining():
    rows = []
    for share, stale_pq in ((0.0, 0.96), (1.0, 0.80)):
        rows += [{"share": share, "index": "flat", "trained_on": "-", "factory": "Flat", "recall_at_k": 1.0,
                  "p99_ms": 0.5, "bytes": 5000},
                 {"share": share, "index": "ivf-pq", "trained_on": "parent", "factory": "IVF8,PQ4x8np",
                  "recall_at_k": stale_pq, "p99_ms": 0.1, "bytes": 900},
                 {"share": share, "index": "ivf-pq", "trained_on": "mixed", "factory": "IVF8,PQ4x8np",
                  "recall_at_k": 0.97, "p99_ms": 0.1, "bytes": 900},
                 {"share": share, "index": "hnsw", "trained_on": "-", "factory": "HNSW8", "recall_at_k": 0.99,
                  "p99_ms": 0.2, "bytes": 8000}]
    summary = index_summary(pd.DataFrame(rows), 0.95)
    assert summary.set_index(["index", "trained_on"]).loc[("ivf-pq", "parent"), "worst_recall"] == 0.80
    advice = index_advice(summary, 0.95)
    assert advice.startswith("IVF8,PQ4x8np (the smallest index holding recall@k >= 0.95 at every share: worst 0.970")
    assert "retrained on the mixed gallery at each step: trained on the parent's vectors it fell to recall 0.800" in advice
    held_by_stale = index_summary(pd.DataFrame(rows).replace({0.80: 0.955}), 0.95)
    assert "trained on the parent's vectors: no retraining needed" in index_advice(held_by_stale, 0.95)
    nothing = index_summary(pd.DataFrame(rows).assign(recall_at_k=0.5), 0.95)
    assert index_advice(nothing, 0.95).startswith("no approximate index held recall@k >= 0.95")
