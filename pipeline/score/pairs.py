"""One (query model, gallery model) pair scored: its search, its metrics overall and per query
subset, and the per-query values its intervals are drawn from; the primitives that
``pipeline.score.matrix`` (one process) and ``pipeline.score.on_ray`` (Ray tasks) share."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.atomic import write_npz_atomic
from pipeline.config import ScoreConfig
from pipeline.data.embeddings import EmbeddingFiles, EmbeddingSet
from pipeline.score.retrieval import ranking_metrics, recall_at_k, search, summarize
from pipeline.score.uncertainty import PER_QUERY_KEYS

RECALL_QUERIES = 1000  # queries whose IVF neighbours are checked against flat search
Gallery = EmbeddingSet | EmbeddingFiles  # in memory, or streamed shard by shard from its files


@dataclass(frozen=True)
class QueryValues:
    """One pair's per-query values of the criterion metrics (``PER_QUERY_KEYS``), in query order."""

    ids: np.ndarray                 # [Q] the query ids
    labels: np.ndarray              # [Q] their labels
    values: dict[str, np.ndarray]   # criterion metric -> [Q]

    def save(self, path: Path, key: dict) -> None:
        """Written with the key of the pair row it belongs to (``load`` gives it back)."""
        write_npz_atomic(path, ids=self.ids.astype(str), labels=self.labels, key=np.array(json.dumps(key)),
                         **self.values)

    @classmethod
    def load(cls, path: Path) -> tuple["QueryValues", dict]:
        with np.load(path, allow_pickle=False) as stored:
            values = {key: stored[key] for key in stored.files if key not in ("ids", "labels", "key")}
            return cls(stored["ids"].astype(object), stored["labels"], values), json.loads(str(stored["key"]))


def score_pair(query: EmbeddingSet, gallery: Gallery, seen_labels: list[int] | None,
               options: ScoreConfig = ScoreConfig(), shard_rows: int = 100_000) -> dict[str, float]:
    """All metrics of one pair, overall and per query subset (``pair_scores``)."""
    return pair_scores(query, gallery, seen_labels, options, shard_rows)[0]


def query_subsets(labels: np.ndarray, seen_labels: list[int] | None) -> dict[str, np.ndarray]:
    """Column suffix -> mask of the queries: all of them (``""``) and, where the old model's
    classes are known, those it saw (``"_seen"``) and those it did not (``"_unseen"``)."""
    subsets = {"": np.ones(len(labels), bool)}
    if seen_labels is not None:
        seen = np.isin(labels, seen_labels)
        subsets.update({"_seen": seen, "_unseen": ~seen})
    return subsets


def pair_scores(query: EmbeddingSet, gallery: Gallery, seen_labels: list[int] | None,
                options: ScoreConfig = ScoreConfig(),
                shard_rows: int = 100_000) -> tuple[dict[str, float], QueryValues]:
    """All metrics of one pair, overall and per query subset, and its per-query criterion values;
    the gallery read ``shard_rows`` at a time. With an IVF index, ``ivf_recall_at_k``: its top-k
    against flat search's, on the first ``RECALL_QUERIES`` queries."""
    check_comparable(query, gallery)
    topk, index = tuple(options.topk), options.index
    shards = lambda: gallery.shards(shard_rows)  # noqa: E731
    neighbours = search(query.vectors, query.ids, shards, max(topk), index)
    per_query = ranking_metrics(neighbours, query.vectors, query.labels, query.ids, shards, len(gallery), topk,
                                options.query_chunk, options.full_ranking, options.threads or None)
    extra = {}
    if index.kind != "flat":
        sample = slice(0, RECALL_QUERIES)
        exact = search(query.vectors[sample], query.ids[sample], shards, max(topk))
        extra["ivf_recall_at_k"] = recall_at_k(neighbours, exact)
    return pair_summary(per_query, query, seen_labels, extra)


def pair_summary(per_query: dict[str, np.ndarray], query: EmbeddingSet, seen_labels: list[int] | None,
                 extra: dict[str, float] | None = None) -> tuple[dict[str, float], QueryValues]:
    """A pair's row from its per-query metrics: the means overall, ``extra``, the means per query
    subset; and its per-query criterion values."""
    row = {**summarize(per_query), **(extra or {})}
    for suffix, mask in query_subsets(query.labels, seen_labels).items():
        if suffix and mask.any():
            row.update({f"{name}{suffix}": value for name, value in summarize(per_query, mask).items()})
    values = {metric: per_query[key] for metric, key in PER_QUERY_KEYS.items() if key in per_query}
    return row, QueryValues(np.asarray(query.ids), np.asarray(query.labels), values)


def check_comparable(query: Gallery, gallery: Gallery) -> None:
    """Two sets of one label map and one dimension, or an error naming both files."""
    if query.classes != gallery.classes:
        only_query = [c for c in query.classes if c not in gallery.classes]
        only_gallery = [c for c in gallery.classes if c not in query.classes]
        detail = (f"only the query's has {only_query}, only the gallery's has {only_gallery}"
                  if only_query or only_gallery else "the same classes in another order")
        raise ValueError(f"{query.path} and {gallery.path} were encoded from datasets with different label maps: "
                         f"{detail}")
    if query.dim != gallery.dim:
        raise ValueError(f"query dimension {query.dim} ({query.path}) differs from gallery dimension "
                         f"{gallery.dim} ({gallery.path})")
