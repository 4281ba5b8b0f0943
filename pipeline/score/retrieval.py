"""Retrieval metrics of one (query set, gallery) pair: one cell of the matrix.

Similarity is the inner product of L2-normalised vectors (cosine). The gallery arrives as
shards (``Shard``: a slice of rows with its position in the whole gallery), from memory or
streamed from Parquet part files, so that memory is bounded by a shard plus the queries'
results, never by the gallery. Per query:

- ``top{k}``: 1 when a same-label gallery item is among the k nearest. Each shard is searched
  with faiss (exact inner product, on the GPU only when faiss reports one and k <= 2048) and
  the per-shard results are merged into one top-k per query (``faiss.ResultHeap``). An IVF
  index (``IndexConfig(kind="ivf")``) computes fewer distances (it holds the gallery's vectors);
  its recall against flat search is ``recall_at_k``;
- ``ap``: average precision over the full ranking, computed on the CPU by chunks of queries:
  each chunk's scores against every shard (float64), then sorted. Tied scores count as one
  threshold, as ``sklearn.metrics.average_precision_score`` does: each relevant item takes the
  precision at the last position of its tie group, so the value does not depend on how ties are
  ordered;
- ``ap_at_r``: ``(1/R) sum_{i<=R} P(i) rel(i)``, R the number of same-label gallery items (the
  top-R of the same ranking), with the same tie rule for positions.

A gallery item with the same id as the query (the same image) is excluded from its ranking.
Queries with no same-label gallery item count as misses for top-k and are left out of the
AP means.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import faiss
import numpy as np
import pandas as pd

from pipeline.config.index import IndexConfig, ivf_lists
from pipeline.data.embeddings import Shard

GPU_MAX_K = 2048  # the largest k that faiss's GPU search serves
SCORE_BUDGET_BYTES = 512 * 2**20  # full-ranking scores held at once (a query chunk x the gallery)


Shards = Callable[[], Iterable[Shard]]  # a gallery that can be read again from its first shard


@dataclass(frozen=True)
class Neighbours:
    """The k nearest gallery items of each query: positions in the gallery and their labels."""

    positions: np.ndarray  # [Q, k] int64, -1 where there is no neighbour
    labels: np.ndarray     # [Q, k] int64, meaningful where ``found``
    found: np.ndarray      # [Q, k] bool


def normalize(vectors: np.ndarray) -> np.ndarray:
    """Unit rows in float64: exact scoring in double precision keeps near-ties from flipping
    with the order of float32 sums (chunking, BLAS blocking)."""
    vectors = np.asarray(vectors, dtype=np.float64)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True).clip(1e-12)


def unit32(vectors: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(normalize(vectors), dtype=np.float32)


def in_memory(ids: np.ndarray | None, labels: np.ndarray, vectors: np.ndarray) -> Shards:
    """A gallery held in memory, as one shard."""
    return lambda: [Shard(0, ids, np.asarray(labels), vectors)]


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


def query_index(query_ids: np.ndarray | None) -> pd.Index | None:
    return None if query_ids is None else pd.Index(query_ids)


def _own_rows(queries: pd.Index | None, count: int, shard: Shard) -> np.ndarray:
    """For each of ``count`` queries, the shard row holding the same image (same id), or -1."""
    own = np.full(count, -1, dtype=np.int64)
    if queries is not None and shard.ids is not None:
        query_of_row = queries.get_indexer(shard.ids)
        rows = np.flatnonzero(query_of_row >= 0)
        own[query_of_row[rows]] = rows
    return own


def _drop_own(distances: np.ndarray, found: np.ndarray, own: np.ndarray) -> None:
    """Mark each query's own image among its results as no result (in place)."""
    mine = (found == own[:, None]) & (own[:, None] >= 0)
    distances[mine], found[mine] = -np.inf, -1


def search(query: np.ndarray, query_ids: np.ndarray | None, shards: Shards, k: int,
           index: IndexConfig = IndexConfig()) -> Neighbours:
    """The ``k`` nearest gallery items of every query (cosine), own images excluded."""
    query = unit32(query)
    if index.kind == "ivf":
        return _search_ivf(query, query_ids, shards, k, index)
    heap, labels, queries = faiss.ResultHeap(len(query), k, keep_max=True), [], query_index(query_ids)
    for shard in shards():
        _check_offset(shard, labels)
        if len(shard.labels):
            heap.add_result(*shard_neighbours(query, queries, shard, k))
        labels.append(np.asarray(shard.labels, dtype=np.int64))
    heap.finalize()
    return with_labels(heap.I, np.concatenate(labels) if labels else np.zeros(0, np.int64))


def shard_neighbours(query: np.ndarray, queries: pd.Index | None, shard: Shard, k: int) -> tuple[np.ndarray, np.ndarray]:
    """One non-empty shard's nearest items of each query (unit float32 rows; ``queries``: their
    ids), own images left out: scores and gallery positions (-1: none), k + 1 deep at most, to
    merge with the other shards' (``faiss.ResultHeap``)."""
    depth = min(k + 1, len(shard.labels))
    distances, found = flat_ip_index(unit32(shard.vectors), depth).search(query, depth)
    _drop_own(distances, found, _own_rows(queries, len(query), shard))
    return distances, np.where(found >= 0, found + shard.offset, -1)


def _check_offset(shard: Shard, previous: list[np.ndarray]) -> None:
    expected = sum(len(labels) for labels in previous)
    if shard.offset != expected:
        raise ValueError(f"gallery shard at offset {shard.offset} does not follow the previous rows (expected {expected})")


def with_labels(positions: np.ndarray, gallery_labels: np.ndarray) -> Neighbours:
    positions = np.asarray(positions, dtype=np.int64)
    labels = gallery_labels[np.clip(positions, 0, None)] if len(gallery_labels) else np.zeros_like(positions)
    return Neighbours(positions, labels, positions >= 0)


def _search_ivf(query: np.ndarray, query_ids: np.ndarray | None, shards: Shards, k: int, spec: IndexConfig) -> Neighbours:
    """IVF search: lists trained on a random sample of the whole gallery (64 vectors per list),
    every shard added, ``nprobe`` lists probed. The index holds the gallery's vectors."""
    size = sum(len(shard.labels) for shard in shards())
    if size == 0:
        return with_labels(np.full((len(query), k), -1), np.zeros(0, np.int64))
    nlist = ivf_lists(size, spec.nlist)
    if nlist > size:
        raise ValueError(f"IVF with {nlist} lists needs at least {nlist} gallery vectors, got {size}")
    share, rng = min(1.0, 64 * nlist / size), np.random.default_rng(0)
    sample = np.concatenate([unit32(shard.vectors)[rng.random(len(shard.labels)) < share] for shard in shards()])
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(query.shape[1]), query.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
    index.train(sample if len(sample) >= nlist else np.concatenate([unit32(s.vectors) for s in shards()]))
    index.nprobe = min(spec.nprobe, nlist)
    labels, own, queries = [], np.full(len(query), -1, dtype=np.int64), query_index(query_ids)
    for shard in shards():
        _check_offset(shard, labels)
        index.add(unit32(shard.vectors))
        rows = _own_rows(queries, len(query), shard)
        own[rows >= 0] = rows[rows >= 0] + shard.offset
        labels.append(np.asarray(shard.labels, dtype=np.int64))
    return with_labels(search_without_own(index, query, own, k), np.concatenate(labels))


def search_without_own(index: faiss.Index, query: np.ndarray, own: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` nearest positions of an index holding the whole gallery, each query's own image
    (``own``: its gallery position, -1 for none) left out; -1 where there are fewer."""
    distances, found = index.search(query, k + 1)
    _drop_own(distances, found, own)
    order = np.argsort(found < 0, axis=1, kind="stable")[:, :k]  # results in rank order, dropped ones last
    return np.take_along_axis(found, order, axis=1)


def recall_at_k(found: Neighbours, exact: Neighbours) -> float:
    """Share of the exact top-k that a search found (the IVF option against flat search), over
    the queries of ``exact`` (the first queries of ``found``)."""
    hits = [len(np.intersect1d(a[a >= 0], b[b >= 0])) / max(1, int((b >= 0).sum()))
            for a, b in zip(found.positions, exact.positions)]
    return float(np.mean(hits)) if hits else float("nan")


def topk_hits(neighbours: Neighbours, query_labels: np.ndarray, topk: tuple[int, ...]) -> dict[str, np.ndarray]:
    relevant = (neighbours.labels == np.asarray(query_labels)[:, None]) & neighbours.found
    return {f"top{k}": relevant[:, :k].any(axis=1).astype(np.float64) for k in topk}


def _precisions(scores: np.ndarray, relevant: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Full-ranking AP and AP@R per row of a score matrix (tie rule in the module docstring):
    each relevant item's position is the count of items scoring at least as high."""
    ascending = np.sort(scores, axis=1)
    relevant_sorted = [np.sort(row[mask]) for row, mask in zip(scores, relevant)]
    positions = [scores.shape[1] - np.searchsorted(row, wanted, side="left")
                 for row, wanted in zip(ascending, relevant_sorted)]
    return precisions_of_parts(relevant_sorted, positions)


def relevant_scores(query: np.ndarray, query_labels: np.ndarray, own: np.ndarray, shard: Shard,
                    budget_bytes: int = SCORE_BUDGET_BYTES) -> list[np.ndarray]:
    """Per query (unit float64 rows), the sorted scores of the shard's items of its label, its own
    image (``own``: gallery positions, -1 none) left out: one shard's part of the full ranking.
    Queries go by chunks whose scores stay within ``budget_bytes``."""
    found = []
    for rows in _query_chunks(len(query), len(shard.labels), budget_bytes):
        scores, relevant = _shard_scores(query[rows], np.asarray(query_labels)[rows], own[rows], shard)
        found += [np.sort(row[mask]) for row, mask in zip(scores, relevant)]
    return found


def counts_at_least(query: np.ndarray, own: np.ndarray, shard: Shard, thresholds: list[np.ndarray],
                    budget_bytes: int = SCORE_BUDGET_BYTES) -> list[np.ndarray]:
    """Per query, how many of the shard's items (own image left out) score at least each of its
    ``thresholds``: the positions of the relevant items in the shard's part of the ranking."""
    counts = []
    for rows in _query_chunks(len(query), len(shard.labels), budget_bytes):
        scores, _ = _shard_scores(query[rows], np.full(rows.stop - rows.start, -1), own[rows], shard)
        ascending = np.sort(scores, axis=1)
        counts += [scores.shape[1] - np.searchsorted(row, wanted, side="left")
                   for row, wanted in zip(ascending, thresholds[rows])]
    return counts


def _query_chunks(queries: int, shard_rows: int, budget_bytes: int) -> list[slice]:
    """Consecutive query ranges whose scores, sorted copy and mask (17 bytes an item) fit the budget."""
    rows = max(1, budget_bytes // max(1, 17 * shard_rows))
    return [slice(start, min(start + rows, queries)) for start in range(0, queries, rows)]


def precisions_of_parts(relevant: list[np.ndarray], positions: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """AP and AP@R per query (tie rule in the module docstring) from its relevant items' sorted
    scores over the whole gallery and their positions (the count of items scoring at least as
    high): from whole score matrices (``_precisions``) and from shards' parts merged exactly
    (``pipeline.score.on_ray``) alike."""
    ap, ap_at_r = np.full(len(relevant), np.nan), np.full(len(relevant), np.nan)
    for row, (scores, position) in enumerate(zip(relevant, positions)):
        count = len(scores)
        if count == 0:
            continue
        precision = (count - np.searchsorted(scores, scores, side="left")) / position
        ap[row] = precision.mean()
        ap_at_r[row] = precision[position <= count].sum() / count
    return ap, ap_at_r


def _shard_scores(query: np.ndarray, query_labels: np.ndarray, own: np.ndarray,
                  shard: Shard) -> tuple[np.ndarray, np.ndarray]:
    """The float64 scores of the queries against one shard and the same-label mask, own images
    at -inf and not relevant."""
    scores = query @ normalize(shard.vectors).T
    relevant = np.asarray(shard.labels)[None, :] == np.asarray(query_labels)[:, None]
    local = own - shard.offset
    mine = np.flatnonzero((local >= 0) & (local < len(shard.labels)))
    scores[mine, local[mine]] = -np.inf
    relevant[mine, local[mine]] = False
    return scores, relevant


def _chunk_precisions(query: np.ndarray, query_labels: np.ndarray, own: np.ndarray, shards: Shards,
                      size: int) -> tuple[np.ndarray, np.ndarray]:
    """One chunk of queries scored against every shard, then its AP and AP@R; ``own`` holds each
    query's own image's gallery position (-1: none), which ranks nowhere."""
    scores = np.full((len(query), size), -np.inf)
    relevant = np.zeros((len(query), size), dtype=bool)
    for shard in shards():
        columns = slice(shard.offset, shard.offset + len(shard.labels))
        scores[:, columns], relevant[:, columns] = _shard_scores(query, query_labels, own, shard)
    return _precisions(scores, relevant)


def own_positions(query_ids: np.ndarray | None, count: int, shards: Shards) -> np.ndarray:
    """For each of ``count`` queries, the gallery position of its own image (same id), or -1."""
    own, queries = np.full(count, -1, dtype=np.int64), query_index(query_ids)
    if queries is not None:
        for shard in shards():
            rows = _own_rows(queries, count, shard)
            own[rows >= 0] = rows[rows >= 0] + shard.offset
    return own


def cpu_count() -> int:
    """CPUs this process may run on (its affinity, which containers and Ray workers narrow)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def average_precisions(query: np.ndarray, query_labels: np.ndarray, query_ids: np.ndarray | None, shards: Shards,
                       gallery_size: int, chunk: int = 1024, threads: int | None = None,
                       budget_bytes: int = SCORE_BUDGET_BYTES) -> tuple[np.ndarray, np.ndarray]:
    """Full-ranking AP and AP@R per query. Chunks of at most ``chunk`` queries, fewer when the
    chunks in flight (scores, their sorted copy and the relevance mask: 17 bytes per query and
    gallery item) would pass ``budget_bytes``, run on ``threads`` threads (default: the CPUs
    this process may use; the GEMMs and the sorts release the GIL)."""
    threads = threads or cpu_count()
    query, query_labels = normalize(query), np.asarray(query_labels)
    own = own_positions(query_ids, len(query), shards)
    rows = max(1, min(chunk, budget_bytes // max(1, 17 * gallery_size * threads)))
    with ThreadPoolExecutor(max_workers=threads) as pool:
        parts = list(pool.map(lambda start: _chunk_precisions(
            query[start : start + rows], query_labels[start : start + rows], own[start : start + rows], shards,
            gallery_size), range(0, len(query), rows)))
    if not parts:
        return np.array([]), np.array([])
    return np.concatenate([ap for ap, _ in parts]), np.concatenate([at_r for _, at_r in parts])


def ranking_metrics(neighbours: Neighbours, query: np.ndarray, query_labels: np.ndarray,
                    query_ids: np.ndarray | None, shards: Shards, gallery_size: int, topk: tuple[int, ...] = (1, 5),
                    chunk: int = 1024, full_ranking: bool = True, threads: int | None = None) -> dict[str, np.ndarray]:
    """Per-query ``top{k}`` from a search's ``neighbours`` and, with ``full_ranking``, ``ap`` and
    ``ap_at_r`` (on ``threads`` threads, ``average_precisions``)."""
    out = topk_hits(neighbours, query_labels, topk)
    if full_ranking:
        out["ap"], out["ap_at_r"] = average_precisions(query, query_labels, query_ids, shards, gallery_size, chunk,
                                                       threads)
    return out


def score_queries(query: np.ndarray, query_labels: np.ndarray, query_ids: np.ndarray | None, shards: Shards,
                  gallery_size: int, topk: tuple[int, ...] = (1, 5), chunk: int = 1024,
                  index: IndexConfig = IndexConfig(), full_ranking: bool = True) -> dict[str, np.ndarray]:
    """Per-query ``top{k}`` and, with ``full_ranking``, ``ap`` and ``ap_at_r``, as arrays of length Q."""
    return ranking_metrics(search(query, query_ids, shards, max(topk), index), query, query_labels, query_ids,
                           shards, gallery_size, topk, chunk, full_ranking)


def per_query_metrics(query: np.ndarray, query_labels: np.ndarray, gallery: np.ndarray, gallery_labels: np.ndarray,
                      query_ids: np.ndarray | None = None, gallery_ids: np.ndarray | None = None,
                      topk: tuple[int, ...] = (1, 5), chunk: int = 1024, full_ranking: bool = True
                      ) -> dict[str, np.ndarray]:
    """``score_queries`` against a gallery held in memory: the per-query values of one cell
    (``summarize`` makes the cell), the way to score arrays outside this package."""
    if query.shape[1] != gallery.shape[1]:
        raise ValueError(f"query dimension {query.shape[1]} differs from gallery dimension {gallery.shape[1]}")
    return score_queries(query, query_labels, query_ids, in_memory(gallery_ids, gallery_labels, gallery),
                         len(gallery), topk, chunk, full_ranking=full_ranking)


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
