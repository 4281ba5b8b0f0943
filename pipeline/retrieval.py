"""Retrieval metrics of one (query set, gallery set) pair: one cell of the matrix.

Similarity is the inner product of L2-normalised vectors (cosine). Per query:

- ``top{k}``: 1 when a same-label gallery item is among the k nearest, found with a faiss
  exact inner-product index (on the GPU only when faiss reports one);
- ``ap``: average precision over the full ranking, computed by chunked exact scoring (one
  float64 GEMM per query chunk, then sorted scores). Tied scores count as one threshold, as
  ``sklearn.metrics.average_precision_score`` does: each relevant item takes the precision
  at the last position of its tie group, so the value does not depend on how ties are ordered;
- ``ap_at_r``: ``(1/R) sum_{i<=R} P(i) rel(i)``, R the number of same-label gallery items,
  with the same tie rule for positions.

A gallery item with the same id as the query (the same image) is excluded from its ranking.
Queries with no same-label gallery item count as misses for top-k and are left out of the
AP means.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import faiss
import numpy as np


def normalize(vectors: np.ndarray) -> np.ndarray:
    """Unit rows in float64: exact scoring in double precision keeps near-ties from flipping
    with the order of float32 sums (chunking, BLAS blocking)."""
    vectors = np.asarray(vectors, dtype=np.float64)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True).clip(1e-12)


GPU_MAX_K = 2048  # the largest k that faiss's GPU search serves


def flat_ip_index(gallery: np.ndarray, k: int = 1) -> faiss.Index:
    """Exact inner-product index for searches of ``k`` neighbours; on the GPUs when this faiss
    build sees any (a GPU build with no device, or faiss-cpu, reports none) and ``k`` is within
    the GPU search's limit, else on the CPU."""
    gallery = np.ascontiguousarray(gallery, dtype=np.float32)
    index = faiss.IndexFlatIP(gallery.shape[1])
    if faiss.get_num_gpus() > 0 and k <= GPU_MAX_K:
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(gallery)
    return index


def self_positions(query_ids: np.ndarray | None, gallery_ids: np.ndarray | None, num_queries: int) -> np.ndarray:
    """For each query, the gallery position of the same image, or -1."""
    if query_ids is None or gallery_ids is None:
        return np.full(num_queries, -1)
    position = {row_id: i for i, row_id in enumerate(gallery_ids)}
    return np.array([position.get(row_id, -1) for row_id in query_ids], dtype=np.int64)


def topk_hits(index: faiss.Index, query: np.ndarray, query_labels: np.ndarray, gallery_labels: np.ndarray,
              self_index: np.ndarray, topk: tuple[int, ...]) -> dict[str, np.ndarray]:
    """``top{k}`` hits from a faiss search of k + 1 neighbours, the query's own image dropped."""
    depth = min(max(topk) + 1, index.ntotal)
    _, neighbours = index.search(np.ascontiguousarray(query, dtype=np.float32), depth)
    valid = (neighbours != self_index[:, None]) & (neighbours >= 0)
    rank = np.cumsum(valid, axis=1)
    relevant = (gallery_labels[neighbours] == query_labels[:, None]) & valid
    return {f"top{k}": (relevant & (rank <= k)).any(axis=1).astype(np.float64) for k in topk}


def _chunk_average_precisions(query: np.ndarray, query_labels: np.ndarray, gallery: np.ndarray,
                              gallery_labels: np.ndarray, own: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Full-ranking AP and AP@R of one chunk of queries (tie rule in the module docstring)."""
    ap, ap_at_r = np.full(len(query), np.nan), np.full(len(query), np.nan)
    scores = query @ gallery.T
    rows = np.arange(len(scores))
    scores[rows[own >= 0], own[own >= 0]] = -np.inf  # the query's own image ranks nowhere
    ascending = np.sort(scores, axis=1)
    relevant = gallery_labels[None, :] == query_labels[:, None]
    relevant[rows[own >= 0], own[own >= 0]] = False
    for row in rows:
        relevant_scores = np.sort(scores[row, relevant[row]])
        count = len(relevant_scores)
        if count == 0:
            continue
        # items scoring >= each relevant score: its position at the end of its tie group
        position = scores.shape[1] - np.searchsorted(ascending[row], relevant_scores, side="left")
        relevant_above = count - np.searchsorted(relevant_scores, relevant_scores, side="left")
        precision = relevant_above / position
        ap[row] = precision.mean()
        ap_at_r[row] = precision[position <= count].sum() / count
    return ap, ap_at_r


def average_precisions(query: np.ndarray, query_labels: np.ndarray, gallery: np.ndarray, gallery_labels: np.ndarray,
                       self_index: np.ndarray, chunk: int, threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Full-ranking AP and AP@R per query, chunks of queries scored on ``threads`` threads
    (default: the CPU count; the GEMM and the sorts release the GIL)."""
    starts = range(0, len(query), chunk)
    with ThreadPoolExecutor(max_workers=threads or os.cpu_count() or 1) as pool:
        parts = list(pool.map(lambda start: _chunk_average_precisions(
            query[start : start + chunk], query_labels[start : start + chunk], gallery, gallery_labels,
            self_index[start : start + chunk]), starts))
    if not parts:
        return np.array([]), np.array([])
    return np.concatenate([ap for ap, _ in parts]), np.concatenate([at_r for _, at_r in parts])


def per_query_metrics(query: np.ndarray, query_labels: np.ndarray, gallery: np.ndarray, gallery_labels: np.ndarray,
                      query_ids: np.ndarray | None = None, gallery_ids: np.ndarray | None = None,
                      topk: tuple[int, ...] = (1, 5), chunk: int = 1024) -> dict[str, np.ndarray]:
    """Per-query ``top{k}``, ``ap`` and ``ap_at_r`` as arrays of length Q."""
    if query.shape[1] != gallery.shape[1]:
        raise ValueError(f"query dimension {query.shape[1]} differs from gallery dimension {gallery.shape[1]}")
    query, gallery = normalize(query), normalize(gallery)
    self_index = self_positions(query_ids, gallery_ids, len(query))
    out = topk_hits(flat_ip_index(gallery, max(topk) + 1), query, query_labels, gallery_labels, self_index, topk)
    out["ap"], out["ap_at_r"] = average_precisions(query, query_labels, gallery, gallery_labels, self_index, chunk)
    return out


def summarize(per_query: dict[str, np.ndarray], mask: np.ndarray | None = None) -> dict[str, float]:
    """Means over the (masked) queries: ``top{k}``, ``map``, ``map_at_r``; NaN when no query."""
    mask = np.ones(len(next(iter(per_query.values()))), dtype=bool) if mask is None else mask
    summary = {}
    for key, values in per_query.items():
        name = {"ap": "map", "ap_at_r": "map_at_r"}.get(key, key)
        chosen = values[mask]
        chosen = chosen[~np.isnan(chosen)]
        summary[name] = float(chosen.mean()) if len(chosen) else float("nan")
    return summary
