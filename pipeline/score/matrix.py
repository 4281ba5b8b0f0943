"""The compatibility report: every (query model, gallery model) pair scored into one table.

One row per pair with the ids of the models and the paths of the two embedding sets it used,
every metric over all queries and per query subset (``_seen``: classes the old model was trained
on, ``_unseen``: the others); for every cross pair whose reference was scored, the difference
``M(q, g) - M(r, r)`` with its paired interval and verdict per criterion metric and subset, the
pair's negative flips and its decision (ship, inconclusive, backfill: ``pipeline.score.criteria``);
and the update gain against the independent model when one is named.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.atomic import write_text_atomic
from pipeline.config import ScoreConfig
from pipeline.data.embeddings import EmbeddingSet
from pipeline.runtime import progress
from pipeline.score.criteria import CRITERION_METRICS, cell, pair_decision, update_gain
from pipeline.score.entries import MatrixEntry, MatrixRoles
from pipeline.score.flips import flip_rate, flips_of_pair
from pipeline.score.pairs import Gallery, QueryValues, pair_scores, query_subsets
from pipeline.score.uncertainty import PER_QUERY_KEYS, aligned, paired_interval

log = logging.getLogger(__name__)


def _checked_pairs(entries: dict[str, MatrixEntry], roles: MatrixRoles, options: ScoreConfig,
                   pairs: list[tuple[str, str]] | None) -> list[tuple[str, str]]:
    """``pairs`` (default: every ordered pair of one dimension), each with a gallery of at least k
    items, and the roles' entries present."""
    for role, name in (("old", roles.old), ("independent", roles.independent)):
        if name is not None and name not in entries:
            raise ValueError(f"the {role} model {name!r} has no embeddings among {sorted(entries)}")
    sets = {name: entry.embeddings for name, entry in entries.items()}
    if pairs is None:
        pairs = [(q, g) for q in sets for g in sets if sets[q].dim == sets[g].dim]
    k = max(options.topk)
    for q, g in pairs:
        if k > len(sets[g]) - (q == g):
            raise ValueError(f"score.topk: k = {k} is larger than the gallery {sets[g].path} "
                             f"({len(sets[g])} rows{', one of them the query itself' if q == g else ''})")
    return pairs


class _QuerySets:
    """Sets on disk read into memory while they are the query set: pairs in query order hold one
    at a time; a gallery that is not the current query set is streamed shard by shard."""

    def __init__(self, entries: dict[str, MatrixEntry]) -> None:
        self.sets = {name: entry.embeddings for name, entry in entries.items()}
        self.loaded: dict[str, EmbeddingSet] = {}

    def query(self, name: str) -> EmbeddingSet:
        if name not in self.loaded:
            self.loaded.clear()
            self.loaded[name] = self.sets[name].load()
        return self.loaded[name]

    def gallery(self, name: str) -> Gallery:
        return self.loaded.get(name, self.sets[name])


@dataclass(frozen=True)
class ScoredPairs:
    """The report table and what its per-pair columns were computed from."""

    table: pd.DataFrame
    queries: dict[tuple[str, str], QueryValues]  # each pair's per-query values
    flips: dict[tuple[str, str], np.ndarray]     # each judged pair's per-query negative flips (``pair_flips``)


def pair_values_file(pair_dir: Path, query: str, gallery: str) -> Path:
    """Where ``score_pairs`` keeps a pair's per-query values (``QueryValues``) under ``pair_dir``."""
    return Path(pair_dir) / f"{query}__{gallery}.queries.npz"


def score_all_pairs(entries: dict[str, MatrixEntry], roles: MatrixRoles = MatrixRoles(),
                    options: ScoreConfig = ScoreConfig(), pairs: list[tuple[str, str]] | None = None,
                    pair_dir: Path | None = None) -> pd.DataFrame:
    """The report table of ``score_pairs``."""
    return score_pairs(entries, roles, options, pairs, pair_dir).table


def score_pairs(entries: dict[str, MatrixEntry], roles: MatrixRoles = MatrixRoles(),
                options: ScoreConfig = ScoreConfig(), pairs: list[tuple[str, str]] | None = None,
                pair_dir: Path | None = None) -> ScoredPairs:
    """The report table over ``pairs`` of ``entries`` (default: every ordered pair of one
    dimension), with the criteria of ``roles`` and each pair's negative flips. With ``pair_dir``,
    each pair's row is saved there as it is scored and reused by a later call on the same inputs."""
    pairs = _checked_pairs(entries, roles, options, pairs)
    sets = _QuerySets(entries)
    classes = next(iter(entries.values())).embeddings.classes
    seen_labels = [classes.index(c) for c in roles.old_classes] if roles.old_classes is not None else None
    scoring = {"topk": list(options.topk), "index": options.index.model_dump(), "full_ranking": options.full_ranking,
               "seen_labels": seen_labels}
    rows, queries, todo, started = {}, {}, {}, time.perf_counter()
    for q, g in pairs:
        key = {"query": _identity(sets.sets[q]), "gallery": _identity(sets.sets[g]), **scoring}
        saved = pair_dir / f"{q}__{g}.json" if pair_dir else None
        saved_values = pair_values_file(pair_dir, q, g) if pair_dir else None
        if (saved and saved.is_file() and saved_values.is_file()
                and (done := json.loads(saved.read_text()))["key"] == key
                and (stored := QueryValues.load(saved_values))[1] == key):
            rows[q, g], queries[q, g] = done["row"], stored[0]
            log.info("score: pair %s -> %s scored before (%s)", q, g, saved)
        else:
            todo[q, g] = key, saved, saved_values
    scored = _scored(list(todo), sets, seen_labels, options)
    for number, ((q, g), metrics, values, where) in enumerate(progress(scored, "score: pairs", len(todo)), 1):
        key, saved, saved_values = todo[q, g]
        used = [label for label in (entries[q].transform, entries[g].transform) if label != "none"]
        rows[q, g] = {"query_model": q, "gallery_model": g, "transform": "; ".join(dict.fromkeys(used)) or "none",
                      "query_embeddings": sets.sets[q].path, "gallery_embeddings": sets.sets[g].path,
                      "num_queries": len(sets.sets[q]), "num_gallery": len(sets.sets[g]), **metrics}
        queries[q, g] = values
        if saved:  # the values first: a row saved without them is scored again
            values.save(saved_values, key)
            write_text_atomic(saved, json.dumps({"key": key, "row": rows[q, g]}, default=float))
        log.info("score: pair %d/%d %s -> %s top1 %.4f map %.4f on %s (%.1f s)", number, len(todo), q, g,
                 metrics["top1"], metrics.get("map", float("nan")), where, time.perf_counter() - started)
    rows, queries = [rows[pair] for pair in pairs], {pair: queries[pair] for pair in pairs}
    references = {name: entry.reference for name, entry in entries.items()}
    table = _with_model_ids(pd.DataFrame(rows), {name: found.model_id for name, found in sets.sets.items()})
    table["reference_model"] = pd.Series([None if q == g else references.get(g, g) for q, g in pairs],
                                         dtype="string", index=table.index)  # whose own pair judges a cross pair
    table = add_update_gains(table, roles.independent, roles.old, references)
    table = add_intervals(table, queries, references, seen_labels, options.bootstrap_resamples, options.interval_level)
    flips = pair_flips(queries, references, roles.old)
    table = add_decisions(add_flips(table, flips, queries, seen_labels, options.max_flip_rate))
    return ScoredPairs(table, queries, flips)


def _with_model_ids(table: pd.DataFrame, model_ids: dict[str, str]) -> pd.DataFrame:
    """``query_model_id`` and ``gallery_model_id`` after the names: the model cards' ids that wrote
    each set, by which the compatibility guard (``pipeline.index.guard``) finds a pair."""
    table = table.copy()
    table.insert(2, "query_model_id", table.query_model.map(model_ids))
    table.insert(3, "gallery_model_id", table.gallery_model.map(model_ids))
    return table


def _scored(pairs: list[tuple[str, str]], sets: _QuerySets, seen_labels: list[int] | None,
            options: ScoreConfig) -> Iterator[tuple[tuple[str, str], dict, QueryValues, str]]:
    """Each pair's metrics and per-query values, and where they were computed: in Ray tasks
    across the cluster with ``options.in_ray`` (``pipeline.score.on_ray``, in the order they
    finish), else one after the other in this process."""
    if options.in_ray:
        from pipeline.score.on_ray import score_in_ray  # here: only this module of score/ imports Ray

        yield from score_in_ray(pairs, sets.sets, seen_labels, options)
        return
    for q, g in pairs:
        yield (q, g), *pair_scores(sets.query(q), sets.gallery(g), seen_labels, options), "this process"


def _identity(embeddings: Gallery) -> dict:
    """What a saved pair row was scored from: the set's folder, model and size."""
    return {"path": str(embeddings.path), "model_id": embeddings.model_id, "rows": len(embeddings)}


def add_update_gains(table: pd.DataFrame, independent: str | None = None, old: str | None = None,
                     references: dict[str, str] | None = None) -> pd.DataFrame:
    """``update_gain_<m>`` of each query against the ``old`` gallery (mapped by T12 or not), the
    ``independent`` model the reference (``pipeline.score.criteria.update_gain``); no columns
    without both roles."""
    if not (independent and old):
        return table
    references = references or {}
    table = table.copy()
    for metric in (m for m in CRITERION_METRICS if m in table.columns):
        old_old, reference = cell(table, old, old, metric), cell(table, independent, independent, metric)
        table[f"update_gain_{metric}"] = [
            update_gain(getattr(r, metric), old_old, reference)
            if references.get(r.gallery_model, r.gallery_model) == old and r.query_model != old else np.nan
            for r in table.itertuples()]
    return table


def add_decisions(table: pd.DataFrame) -> pd.DataFrame:
    """``decision``: each judged pair's ``pipeline.score.criteria.Decision`` (ship, inconclusive,
    backfill) from its intervals and negative flips; empty where it has no interval."""
    table = table.copy()
    decisions = [pair_decision(row) for row in table.to_dict("records")]
    table["decision"] = pd.Series([None if d is None else str(d) for d in decisions], dtype="string",
                                  index=table.index)
    return table


def add_intervals(table: pd.DataFrame, queries: dict[tuple[str, str], QueryValues], references: dict[str, str],
                  seen_labels: list[int] | None, resamples: int = 1000, level: float = 0.95) -> pd.DataFrame:
    """For each cross pair whose reference ``(r, r)`` was scored (``r`` the gallery's reference: itself,
    or the old model for an old gallery mapped by T12) and
    each criterion metric, overall and per query subset: ``delta_<m>`` = ``M(q, g) - M(r, r)``, its
    paired bootstrap interval ``delta_<m>_low`` / ``_high`` and ``verdict_<m>`` (met, not met,
    within noise; ``pipeline.score.uncertainty``). No columns when ``resamples`` is 0."""
    if resamples == 0:
        return table
    suffixes = list(query_subsets(np.zeros(0, int), seen_labels))  # the query subsets' column suffixes
    columns: dict[str, list] = {}
    for position, row in enumerate(table.itertuples()):
        q, g = row.query_model, row.gallery_model
        r = references.get(g, g)
        judged = q != g and (q, g) in queries and (r, r) in queries
        if judged and set(queries[q, g].ids.tolist()) != set(queries[r, r].ids.tolist()):
            log.warning("score: %s -> %s and its reference %s -> %s were scored on different query images; "
                        "no interval for that cell", q, g, r, r)
            judged = False
        if judged:
            pair, reference = queries[q, g], queries[r, r]
            masks = query_subsets(pair.labels, seen_labels)
        for metric in (m for m in CRITERION_METRICS if m in PER_QUERY_KEYS and m in table.columns):
            judged_metric = judged and metric in pair.values
            if judged_metric:  # the reference's values in the pair's query order, once per metric
                base = aligned(pair.ids, reference.ids, reference.values[metric], f"{q} -> {g}")
            for suffix in suffixes:
                name = f"{metric}{suffix}"
                interval = None
                if judged_metric and masks[suffix].any():
                    mask = masks[suffix]
                    interval = paired_interval(pair.values[metric][mask], base[mask], resamples, level)
                for column, value in ((f"delta_{name}", interval and interval.delta),
                                      (f"delta_{name}_low", interval and interval.low),
                                      (f"delta_{name}_high", interval and interval.high),
                                      (f"verdict_{name}", interval and interval.verdict)):
                    columns.setdefault(column, [None] * len(table))[position] = value
    table = table.copy()
    for column, values in columns.items():
        table[column] = pd.Series(values, dtype="string" if column.startswith("verdict_") else "float64",
                                  index=table.index)
    return table


def flip_reference(query: str, gallery: str, references: dict[str, str], old: str | None) -> str | None:
    """The model whose own pair a pair's negative flips are counted against: the gallery's
    reference (what the gallery's users get today: the old model for an old gallery, mapped or
    not); for a model's own pair, the old model (a full backfill's flips). None: not judged."""
    reference = old if query == gallery else references.get(gallery, gallery)
    return None if reference is None or (query, gallery) == (reference, reference) else reference


def pair_flips(queries: dict[tuple[str, str], QueryValues], references: dict[str, str],
               old: str | None) -> dict[tuple[str, str], np.ndarray]:
    """Each pair's per-query negative flips (``pipeline.score.flips``) against its
    ``flip_reference``'s pair, in the pair's query order; pairs whose reference was not scored,
    or on other query images (a warning), are left out."""
    flips = {}
    for (q, g), values in queries.items():
        r = flip_reference(q, g, references, old)
        if r is None or (r, r) not in queries or "top1" not in values.values:
            continue
        reference = queries[r, r]
        try:
            flips[q, g] = flips_of_pair(values.ids, values.values["top1"], reference.ids, reference.values["top1"],
                                        f"{q} -> {g}")
        except ValueError as error:  # scored on other query images than its reference
            log.warning("score: %s; no negative flips for that pair", error)
    return flips


def add_flips(table: pd.DataFrame, flips: dict[tuple[str, str], np.ndarray],
              queries: dict[tuple[str, str], QueryValues], seen_labels: list[int] | None,
              max_rate: float | None = None) -> pd.DataFrame:
    """``negative_flip_rate`` of each pair in ``flips``, overall and per query subset, and with a
    ``max_rate`` whether it is at most that (``flips_within_limit``); empty elsewhere."""
    if not flips:
        return table
    columns: dict[str, list] = {}
    for position, row in enumerate(table.itertuples()):
        pair = row.query_model, row.gallery_model
        if pair not in flips:
            continue
        for suffix, mask in query_subsets(queries[pair].labels, seen_labels).items():
            columns.setdefault(f"negative_flip_rate{suffix}", [np.nan] * len(table))[position] = \
                flip_rate(flips[pair], mask)
    table = table.copy()
    for column, values in columns.items():
        table[column] = values
    if max_rate is not None:
        table["flips_within_limit"] = pd.array([None if np.isnan(rate) else bool(rate <= max_rate)
                                                for rate in table["negative_flip_rate"]], dtype="boolean")
    return table


def flips_per_class(scored: ScoredPairs, classes: list[str]) -> pd.DataFrame:
    """One row per judged pair and class: its queries of that class, how many flip, and the rate."""
    rows = []
    for (q, g), flips in scored.flips.items():
        labels = scored.queries[q, g].labels
        for label, name in enumerate(classes):
            mask = labels == label
            rows.append({"query_model": q, "gallery_model": g, "class": name, "queries": int(mask.sum()),
                         "negative_flips": int(flips[mask].sum()), "negative_flip_rate": flip_rate(flips, mask)})
    return pd.DataFrame(rows, columns=["query_model", "gallery_model", "class", "queries", "negative_flips",
                                       "negative_flip_rate"])


def matrix(table: pd.DataFrame, metric: str, order: list[str]) -> pd.DataFrame:
    """The N x N matrix ``C[query][gallery]`` of one metric (NaN where dimensions differ)."""
    pivot = table.pivot(index="query_model", columns="gallery_model", values=metric)
    return pivot.reindex(index=order, columns=order)
