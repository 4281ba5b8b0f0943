"""Approximate indexes on a gallery that mixes parent and new vectors.

While a backfill runs, the gallery holds the parent's vectors for the items not yet re-encoded
and the new model's for the others, and the new model's queries search it. At each share of the
backfill, each index of ``MixedIndexConfig`` (faiss's flat, IVF-Flat, IVF-PQ and HNSW, inner
product on unit vectors) is built on the mixed gallery and measured: recall@k against flat
search on the same gallery, top-1 and mAP@k of its ranking, latency p50 and p99 of queries
searched one at a time, serialized size, training and adding time. The indexes that learn from
vectors (IVF's lists, PQ's codebooks) are built twice: trained on the parent's vectors only
(``trained_on="parent"``: the index serving before the upgrade, to which the backfill adds the
re-encoded vectors) and retrained on the mixed gallery (``"mixed"``), so whether an index trained
on old vectors serves new ones is measured, not assumed. A query's own image is left out of its
results, as in ``pipeline.score.retrieval``.
"""

from __future__ import annotations

from time import perf_counter

import faiss
import numpy as np
import pandas as pd

from pipeline.config.index import TRAINED_KINDS, MixedIndexConfig, factory_string
from pipeline.runtime import progress
from pipeline.score.retrieval import recall_at_k, search_without_own, topk_hits, unit32, with_labels


def trained_index(config: MixedIndexConfig, kind: str, training: np.ndarray, size: int) -> tuple[faiss.Index, float]:
    """An empty index of ``kind`` for a gallery of ``size`` vectors, trained on ``training`` (unit
    float32 rows) unless it learns nothing, and the seconds its training took."""
    dim = training.shape[1]
    index = faiss.index_factory(dim, factory_string(config, kind, dim, size), faiss.METRIC_INNER_PRODUCT)
    start = perf_counter()
    if not index.is_trained:
        index.train(training)
    return index, perf_counter() - start


def filled_index(config: MixedIndexConfig, kind: str, empty: faiss.Index,
                 gallery: np.ndarray) -> tuple[faiss.Index, float]:
    """A copy of the trained ``empty`` index holding ``gallery``, with the config's search
    settings, and the seconds adding took."""
    index = faiss.clone_index(empty)
    start = perf_counter()
    index.add(gallery)
    seconds = perf_counter() - start
    if kind in TRAINED_KINDS:
        ivf = faiss.extract_index_ivf(index)
        ivf.nprobe = min(config.nprobe, ivf.nlist)
    if kind == "hnsw":
        index.hnsw.efSearch = config.ef_search
    return index, seconds


def latencies_ms(index: faiss.Index, queries: np.ndarray, k: int) -> np.ndarray:
    """Milliseconds of each query searched alone (as a service answers one user)."""
    spent = np.empty(len(queries))
    for row in range(len(queries)):
        start = perf_counter()
        index.search(queries[row : row + 1], k)
        spent[row] = perf_counter() - start
    return spent * 1e3


def average_precision_at_k(positions: np.ndarray, gallery_labels: np.ndarray, query_labels: np.ndarray,
                           relevant: np.ndarray) -> np.ndarray:
    """Per query: ``sum_{i<=k} P(i) rel(i) / min(R, k)`` over its ranking ``positions`` (-1: none),
    ``relevant`` (R) its same-label gallery items; NaN where R is 0."""
    k = positions.shape[1]
    hits = (gallery_labels[np.clip(positions, 0, None)] == query_labels[:, None]) & (positions >= 0)
    precision = np.cumsum(hits, axis=1) / np.arange(1, k + 1)
    denominator = np.minimum(relevant, k).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, (precision * hits).sum(axis=1) / denominator, np.nan)


def mixed_gallery(parent: np.ndarray, new: np.ndarray, order: np.ndarray, share: float) -> np.ndarray:
    """The gallery once ``share`` of it is re-encoded in ``order``: the new vectors of the first
    items of the order, the parent's of the others (same images, same rows)."""
    mixed = parent.copy()
    chosen = order[: int(round(share * len(order)))]
    mixed[chosen] = new[chosen]
    return mixed


def mixed_index_table(parent: np.ndarray, new: np.ndarray, order: np.ndarray, gallery_labels: np.ndarray,
                      queries: np.ndarray, query_labels: np.ndarray, own: np.ndarray,
                      config: MixedIndexConfig) -> pd.DataFrame:
    """One row per (share, index kind, training) of a gallery re-encoded in ``order``: the
    ``parent`` and ``new`` galleries hold the same images in the same rows; ``own`` is each
    query's own image's gallery position (-1: none)."""
    if parent.shape != new.shape:
        raise ValueError(f"parent and new gallery differ in shape: {parent.shape} vs {new.shape}")
    if config.steps == 0:
        raise ValueError("indexes.steps is 0: there is no share to measure")
    parent, new, queries = unit32(parent), unit32(new), unit32(queries)
    gallery_labels, query_labels = np.asarray(gallery_labels), np.asarray(query_labels)
    relevant = np.bincount(gallery_labels, minlength=query_labels.max() + 1)[query_labels] - (
        (own >= 0) & (gallery_labels[np.clip(own, 0, None)] == query_labels))
    sample, size = slice(0, config.latency_queries), len(parent)
    on_parent = {kind: trained_index(config, kind, parent, size) for kind in config.kinds}  # trained once
    rows = []
    for step in progress(range(config.steps + 1), "report: mixed-gallery indexes"):
        share = step / config.steps
        mixed = mixed_gallery(parent, new, order, share)
        exact, _ = filled_index(config, "flat", faiss.IndexFlatIP(mixed.shape[1]), mixed)
        exact_found = with_labels(search_without_own(exact, queries, own, config.k), gallery_labels)
        for kind in config.kinds:
            trainings = {"-": on_parent[kind]} if kind not in TRAINED_KINDS else {
                "parent": on_parent[kind],
                "mixed": on_parent[kind] if step == 0 else trained_index(config, kind, mixed, size)}
            for trained_on, (empty, train_s) in trainings.items():
                index, add_s = filled_index(config, kind, empty, mixed)
                found = with_labels(search_without_own(index, queries, own, config.k), gallery_labels)
                latency = latencies_ms(index, queries[sample], config.k + 1)
                rows.append({
                    "share": share, "index": kind, "trained_on": trained_on,
                    "factory": factory_string(config, kind, mixed.shape[1], size), "k": config.k,
                    "recall_at_k": recall_at_k(found, exact_found),
                    "top1": float(topk_hits(found, query_labels, (1,))["top1"].mean()),
                    "map_at_k": float(np.nanmean(average_precision_at_k(found.positions, gallery_labels,
                                                                        query_labels, relevant))),
                    "p50_ms": float(np.percentile(latency, 50)), "p99_ms": float(np.percentile(latency, 99)),
                    "bytes": int(faiss.serialize_index(index).size), "train_s": train_s, "add_s": add_s})
    return pd.DataFrame(rows)


def index_summary(table: pd.DataFrame, min_recall: float) -> pd.DataFrame:
    """Per index and training: the worst recall@k over the shares, whether it holds ``min_recall``
    at every share, its slowest p99, and its size on the whole re-encoded gallery."""
    groups = table.groupby(["index", "trained_on", "factory"], sort=False)
    summary = groups.agg(worst_recall=("recall_at_k", "min"), slowest_p99_ms=("p99_ms", "max")).reset_index()
    summary["bytes"] = groups.apply(lambda rows: int(rows.loc[rows.share.idxmax(), "bytes"]),
                                    include_groups=False).to_numpy()
    summary["holds_recall"] = summary.worst_recall >= min_recall
    return summary


def index_advice(summary: pd.DataFrame, min_recall: float) -> str:
    """Which index to serve the backfill with: the smallest that holds recall, and whether the
    index trained on the parent's vectors does (no retraining) or only a retrained one."""
    held = summary[summary.holds_recall & (summary["index"] != "flat")]
    if held.empty:
        return (f"no approximate index held recall@k >= {min_recall:.2f} at every share: serve flat search, or "
                "raise nprobe / efSearch / the PQ code size")
    best = held.assign(retrained=held.trained_on == "mixed").sort_values(["bytes", "retrained"]).iloc[0]
    stale = summary[(summary["index"] == best["index"]) & (summary.trained_on == "parent")]
    training = {"-": "", "parent": ", trained on the parent's vectors: no retraining needed during the backfill",
                "mixed": ", retrained on the mixed gallery at each step: trained on the parent's vectors it fell to "
                         f"recall {float(stale.worst_recall.min()):.3f}"}[best.trained_on]
    return (f"{best.factory} (the smallest index holding recall@k >= {min_recall:.2f} at every share: worst "
            f"{best.worst_recall:.3f}, {best['bytes'] / 2**20:.1f} MiB, p99 {best.slowest_p99_ms:.2f} ms{training})")
