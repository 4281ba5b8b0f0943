"""Scoring pairs in Ray tasks across the cluster's nodes (``score.in_ray``); outside
``pipeline.score``, whose modules import no Ray.

Each pair is one task running ``pair_scores`` where it lands; the driver keeps the rows and
per-query values and folds them exactly as one process does (criteria, intervals, flips), so the
report is the same. Tasks are spread over the alive nodes' slots: a GPU node runs one task per
GPU (and a CPU: ``num_gpus=1``, faiss searches on that GPU where the node's environment has GPU
faiss, requirements-gpu.txt), a CPU node one per CPU; each slot holds at most one task at a
time, placed on its node by a soft node affinity (a task whose node is lost runs elsewhere), and
a task's full ranking runs on the CPUs Ray assigned it, not on every core of its node.
Sets on disk travel as their paths (every node must see them: shared storage, as Ray Train's);
sets in memory travel once through the object store.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from pipeline.config import ScoreConfig
from pipeline.data.embeddings import EmbeddingSet
from pipeline.score.matrix import Gallery, QueryValues, pair_scores


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
    interleaved = [slot for round_ in zip(*_padded(per_node)) for slot in round_ if slot is not None]
    if not interleaved:
        raise RuntimeError(f"the Ray cluster has no alive node with a CPU or GPU to score on: {ray.nodes()}")
    return interleaved


def _padded(lists: list[list]) -> list[list]:
    longest = max((len(items) for items in lists), default=0)
    return [items + [None] * (longest - len(items)) for items in lists]


@ray.remote(max_retries=2)
def _score_pair(query: Gallery, gallery: Gallery, seen_labels: list[int] | None,
                options: ScoreConfig) -> tuple[dict, QueryValues, str]:
    loaded = query if isinstance(query, EmbeddingSet) else query.load()
    cpus = max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))
    row, values = pair_scores(loaded, gallery, seen_labels, options.model_copy(update={"threads": cpus}))
    return row, values, ray.get_runtime_context().get_node_id()


def score_in_ray(pairs: list[tuple[str, str]], sets: dict[str, Gallery], seen_labels: list[int] | None,
                 options: ScoreConfig) -> Iterator[tuple[tuple[str, str], dict, QueryValues, str]]:
    """Each pair's row, per-query values and the node that scored it, as the tasks finish."""
    shared = {name: ray.put(found) if isinstance(found, EmbeddingSet) else found for name, found in sets.items()}
    free, waiting, running = slots(), list(pairs), {}
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
        yield pair, row, values, node
