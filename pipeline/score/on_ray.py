"""Scoring pairs in Ray tasks across the cluster's nodes (``score.in_ray``): the one module of
``pipeline.score`` that imports Ray, loaded only when a report scores in Ray.

Each pair is one task running ``pair_scores`` where it lands; the driver keeps the rows and
per-query values and folds them exactly as one process does (criteria, intervals, flips), so the
report is the same. Tasks are spread over the alive nodes' slots: a GPU node runs one task per
GPU (and a CPU: ``num_gpus=1``, faiss searches on that GPU where the node's environment has GPU
faiss, requirements-gpu.txt), a CPU node one per CPU; each slot holds at most one task at a
time, placed on its node by a soft node affinity (a task whose node is lost runs elsewhere), and
a task's full ranking runs on the CPUs Ray assigned it, not on every core of its node. A pair
whose gallery on disk is larger than ``score.split_rows`` (flat search only) is scored first, on
its own, in tasks of its gallery's groups of part files spread over the nodes (``_score_split_pair``).
Sets on disk travel as their paths (every node must see them: shared storage, as Ray Train's);
sets in memory travel once through the object store.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from itertools import zip_longest

import faiss
import numpy as np
import pyarrow.parquet as pq
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from pipeline.config import ScoreConfig
from pipeline.data.embeddings import EmbeddingFiles, EmbeddingSet, Shard
from pipeline.score.pairs import Gallery, QueryValues, check_comparable, pair_scores, pair_summary
from pipeline.score.retrieval import (
    SCORE_BUDGET_BYTES,
    Neighbours,
    counts_at_least,
    normalize,
    own_positions,
    precisions_of_parts,
    query_index,
    relevant_scores,
    shard_neighbours,
    topk_hits,
    unit32,
)


@dataclass(frozen=True)
class Slot:
    """Room for one task on one node."""

    node_id: str
    gpu: bool


def slots() -> list[Slot]:
    """One slot per GPU of each alive GPU node and per CPU of each other alive node, nodes
    interleaved so that the first tasks go to different nodes."""
    per_node = []
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        resources = node.get("Resources", {})
        gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 0))
        node_id = node["NodeID"]
        per_node.append([Slot(node_id, True)] * min(gpus, cpus) if gpus else [Slot(node_id, False)] * cpus)
    interleaved = [slot for round_ in zip_longest(*per_node) for slot in round_ if slot is not None]
    if not interleaved:
        raise RuntimeError(f"the Ray cluster has no alive node with a CPU or GPU to score on: {ray.nodes()}")
    return interleaved


@ray.remote(max_retries=2)
def _score_pair(query: Gallery, gallery: Gallery, seen_labels: list[int] | None,
                options: ScoreConfig) -> tuple[dict, QueryValues, str]:
    loaded = query if isinstance(query, EmbeddingSet) else query.load()
    cpus = max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))
    row, values = pair_scores(loaded, gallery, seen_labels, options.model_copy(update={"threads": cpus}))
    return row, values, ray.get_runtime_context().get_node_id()


def score_in_ray(pairs: list[tuple[str, str]], sets: dict[str, Gallery], seen_labels: list[int] | None,
                 options: ScoreConfig) -> Iterator[tuple[tuple[str, str], dict, QueryValues, str]]:
    """Each pair's row, per-query values and where it was scored ("node <id>", or "nodes <ids>"
    for a pair whose gallery is split by ``gallery_groups``: those first, in tasks of the
    gallery's groups), the others as their tasks finish."""
    split = [(q, g) for q, g in pairs if len(gallery_groups(sets[g], options)) > 1]
    for q, g in split:
        row, values, nodes = _score_split_pair(sets[q], sets[g], seen_labels, options)
        yield (q, g), row, values, f"nodes {', '.join(sorted(nodes))}"
    shared = {name: ray.put(found) if isinstance(found, EmbeddingSet) else found for name, found in sets.items()}
    free, waiting, running = slots(), [pair for pair in pairs if pair not in split], {}
    while waiting or running:
        while waiting and free:
            slot, (q, g) = free.pop(0), waiting.pop(0)
            strategy = NodeAffinitySchedulingStrategy(slot.node_id, soft=True)
            task = _score_pair.options(num_cpus=1, num_gpus=1 if slot.gpu else 0, scheduling_strategy=strategy)
            running[task.remote(shared[q], shared[g], seen_labels, options)] = (slot, (q, g))
        [done], _ = ray.wait(list(running), num_returns=1)
        slot, pair = running.pop(done)
        free.append(slot)
        row, values, node = ray.get(done)
        yield pair, row, values, f"node {node}"


@dataclass(frozen=True)
class GalleryGroup:
    """Consecutive whole part files of a gallery, and the gallery position of their first row."""

    files: EmbeddingFiles
    offset: int

    def shards(self) -> Iterator[Shard]:
        for shard in self.files.shards():
            yield replace(shard, offset=self.offset + shard.offset)


def gallery_groups(gallery: Gallery, options: ScoreConfig) -> list[GalleryGroup]:
    """The groups a pair's gallery is scored in: whole part files of about ``options.split_rows``
    rows for a gallery on disk searched flat; one group otherwise."""
    if not isinstance(gallery, EmbeddingFiles) or options.index.kind != "flat" or len(gallery) <= options.split_rows:
        return [GalleryGroup(gallery, 0)]
    groups, files, rows, offset = [], [], 0, 0
    for file in gallery.files:
        count = pq.ParquetFile(file).metadata.num_rows
        if files and rows + count > options.split_rows:
            groups.append(GalleryGroup(replace(gallery, files=files, num_rows=rows), offset))
            files, offset, rows = [], offset + rows, 0
        files, rows = [*files, file], rows + count
    return [*groups, GalleryGroup(replace(gallery, files=files, num_rows=rows), offset)]


@ray.remote(max_retries=2)
def _group_neighbours(query: EmbeddingSet, group: GalleryGroup,
                      k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """One group's top-k per query: scores, gallery positions and their labels; and its node."""
    unit, queries = unit32(query.vectors), query_index(query.ids)
    heap, labels = faiss.ResultHeap(len(query), k, keep_max=True), []
    for shard in group.shards():
        labels.append(np.asarray(shard.labels, dtype=np.int64))
        if len(shard.labels):
            heap.add_result(*shard_neighbours(unit, queries, shard, k))
    heap.finalize()
    positions = np.asarray(heap.I, dtype=np.int64)
    found = np.concatenate(labels)[np.clip(positions - group.offset, 0, None)] if labels else positions
    return heap.D, positions, np.where(positions >= 0, found, -1), ray.get_runtime_context().get_node_id()


def _own_in(query: EmbeddingSet, rows: slice, shard: Shard) -> np.ndarray:
    """For a chunk of queries, the gallery position of each one's own image in ``shard``, or -1."""
    return own_positions(query.ids[rows], rows.stop - rows.start, lambda: [shard])


@ray.remote(max_retries=2)
def _group_relevant(query: EmbeddingSet, rows: slice, group: GalleryGroup) -> tuple[list[np.ndarray], str]:
    """For a chunk of queries, the scores of the group's items of each one's label; and its node."""
    unit, labels = normalize(query.vectors[rows]), query.labels[rows]
    parts = [relevant_scores(unit, labels, _own_in(query, rows, shard), shard) for shard in group.shards()]
    return [np.concatenate([part[row] for part in parts]) for row in range(len(unit))], \
        ray.get_runtime_context().get_node_id()


@ray.remote(max_retries=2)
def _group_counts(query: EmbeddingSet, rows: slice, group: GalleryGroup,
                  thresholds: list[np.ndarray]) -> list[np.ndarray]:
    """For a chunk of queries, how many of the group's items score at least each threshold."""
    unit = normalize(query.vectors[rows])
    total = [np.zeros(len(wanted), dtype=np.int64) for wanted in thresholds]
    for shard in group.shards():
        for row, counted in enumerate(counts_at_least(unit, _own_in(query, rows, shard), shard, thresholds)):
            total[row] += counted
    return total


def _score_split_pair(query: Gallery, gallery: EmbeddingFiles, seen_labels: list[int] | None,
                      options: ScoreConfig) -> tuple[dict, QueryValues, set[str]]:
    """One pair scored in tasks of its gallery's groups, spread over the nodes: the groups' top-k
    merged into one per query (``faiss.ResultHeap``); the full ranking by chunks of queries whose
    relevant scores stay within ``SCORE_BUDGET_BYTES``: each group's relevant scores, then, on the
    node that scored them (so that an item's score is the same bits in both rounds), the count of
    its items at or above every relevant score of the chunk (``precisions_of_parts``). A node lost
    between the two rounds fails the pair (its counts are pinned there): the job's rerun scores it
    again, the pairs scored before kept. Chunks assume every gallery item may be relevant, so a
    gallery of 1e7 items takes 6 queries a chunk: correct, and slow."""
    check_comparable(query, gallery)
    loaded = query if isinstance(query, EmbeddingSet) else query.load()
    shared, groups, k = ray.put(loaded), gallery_groups(gallery, options), max(options.topk)
    spread = {"num_cpus": 1, "scheduling_strategy": "SPREAD"}
    parts = ray.get([_group_neighbours.options(**spread).remote(shared, group, k) for group in groups])
    heap = faiss.ResultHeap(len(loaded), k, keep_max=True)
    for distances, positions, _, _ in parts:
        heap.add_result(distances, positions)
    heap.finalize()
    positions = np.asarray(heap.I, dtype=np.int64)
    neighbours = Neighbours(positions, _labels_at(positions, [(part[1], part[2]) for part in parts]), positions >= 0)
    per_query, nodes = topk_hits(neighbours, loaded.labels, tuple(options.topk)), {part[3] for part in parts}
    if options.full_ranking:
        ap, ap_at_r = [], []
        step = max(1, SCORE_BUDGET_BYTES // (8 * len(gallery)))
        for rows in (slice(start, min(start + step, len(loaded))) for start in range(0, len(loaded), step)):
            found = ray.get([_group_relevant.options(**spread).remote(shared, rows, group) for group in groups])
            relevant = [np.sort(np.concatenate([scores[row] for scores, _ in found]))
                        for row in range(rows.stop - rows.start)]
            wanted = ray.put(relevant)
            counts = ray.get([_group_counts.options(num_cpus=1, scheduling_strategy=NodeAffinitySchedulingStrategy(
                node, soft=False)).remote(shared, rows, group, wanted) for group, (_, node) in zip(groups, found)])
            chunk_ap, chunk_at_r = precisions_of_parts(relevant, [sum(count[row] for count in counts)
                                                                  for row in range(len(relevant))])
            ap.append(chunk_ap)
            ap_at_r.append(chunk_at_r)
            nodes |= {node for _, node in found}
        per_query["ap"], per_query["ap_at_r"] = (np.concatenate(ap), np.concatenate(ap_at_r)) if ap else (
            np.array([]), np.array([]))
    row, values = pair_summary(per_query, loaded, seen_labels)
    return row, values, nodes


def _labels_at(positions: np.ndarray, found: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """The gallery labels at ``positions``, from the groups' (positions, labels) of their top-k."""
    known, labels = (np.concatenate([part.ravel() for part in parts]) for parts in zip(*found))
    order = np.argsort(known, kind="stable")
    at = np.clip(np.searchsorted(known[order], positions), 0, len(known) - 1)
    return np.where(positions >= 0, labels[order][at], -1)
