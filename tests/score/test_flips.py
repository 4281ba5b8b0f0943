"""Negative flips (pipeline.score.flips): against a brute-force reference, per subset and class,
and in the verdicts of the report and the lineage."""

from dataclasses import replace

import numpy as np
import pytest

from pipeline.config import ScoreConfig
from pipeline.data.embeddings import EmbeddingSet
from pipeline.lineage.metrics import verdict
from pipeline.score.criteria import Decision, pair_decision
from pipeline.score.entries import MatrixEntry, MatrixRoles
from pipeline.score.flips import flip_rate, flips_of_pair, negative_flips
from pipeline.score.matrix import flips_per_class, score_pairs
from tests.reference import reference

CLASSES = ["a", "b", "c", "d", "e"]


def test_a_flip_is_right_under_the_reference_and_wrong_under_the_pair():
    assert negative_flips(np.array([1, 0, 0, 1]), np.array([1, 1, 0, 0])).tolist() == [False, True, False, False]
    assert flip_rate(np.array([True, False, False, False])) == 0.25
    assert flip_rate(np.array([True, False]), np.array([False, True])) == 0.0
    assert np.isnan(flip_rate(np.array([True]), np.array([False])))


def test_the_reference_is_matched_to_the_pair_by_query_id():
    flips = flips_of_pair(np.array(["q2", "q1"]), np.array([0.0, 0.0]), np.array(["q1", "q2"]), np.array([1.0, 0.0]),
                          "new -> old")
    assert flips.tolist() == [False, True]
    with pytest.raises(ValueError, match="new -> old: the pair and its reference were scored on different query"):
        flips_of_pair(np.array(["q3"]), np.array([0.0]), np.array(["q1"]), np.array([1.0]), "new -> old")


def _sets(rng: np.random.Generator) -> dict[str, EmbeddingSet]:
    """An old model, and a new one whose set lists the same images in another order."""
    labels = rng.integers(0, len(CLASSES), 400)
    ids = np.array([f"i{k:03d}" for k in range(400)], dtype=object)
    centers = rng.normal(size=(len(CLASSES), 16))
    old = centers[labels] + rng.normal(scale=1.3, size=(400, 16))
    new = centers[labels] + rng.normal(scale=1.1, size=(400, 16))
    order = rng.permutation(400)
    return {"old": EmbeddingSet("old", "old-1", "old", ids, labels, old.astype(np.float32), CLASSES),
            "new": EmbeddingSet("new", "new-1", "new", ids[order], labels[order], new[order].astype(np.float32),
                                CLASSES)}


def _centers_of(found: EmbeddingSet) -> np.ndarray:
    """Each row's class mean with a little noise: a model that separates the classes well."""
    means = np.stack([found.vectors[found.labels == label].mean(axis=0) for label in range(len(CLASSES))])
    return (means[found.labels] + np.random.default_rng(0).normal(scale=0.3, size=found.vectors.shape)).astype(
        np.float32)


def test_flip_rates_equal_a_brute_force_count_overall_per_subset_and_per_class():
    sets = _sets(np.random.default_rng(3))
    entries = {name: MatrixEntry.plain(name, embeddings, "old") for name, embeddings in sets.items()}
    scored = score_pairs(entries, MatrixRoles(old="old", old_classes=["a", "b"]), ScoreConfig(topk=[1]))
    old, new = sets["old"], sets["new"]
    old_hits = dict(zip(old.ids, reference(old.vectors, old.labels, old.vectors, old.labels, old.ids, old.ids,
                                           topk=(1,))["top1"]))
    table = scored.table.set_index(["query_model", "gallery_model"])
    for gallery in ("old", "new"):  # new -> old against old -> old; new -> new (a full backfill) against it too
        g = sets[gallery]
        hits = reference(new.vectors, new.labels, g.vectors, g.labels, new.ids, g.ids, topk=(1,))["top1"]
        flips = np.array([old_hits[i] == 1 and hit == 0 for i, hit in zip(new.ids, hits)])
        seen = np.isin(new.labels, [0, 1])
        row = table.loc[("new", gallery)]
        assert 0 < flips.sum() < len(flips)
        assert row["negative_flip_rate"] == pytest.approx(flips.mean())
        assert row["negative_flip_rate_seen"] == pytest.approx(flips[seen].mean())
        assert row["negative_flip_rate_unseen"] == pytest.approx(flips[~seen].mean())
        per_class = flips_per_class(scored, CLASSES).set_index(["query_model", "gallery_model", "class"])
        for label, name in enumerate(CLASSES):
            counted = per_class.loc[("new", gallery, name)]
            assert counted["queries"] == (new.labels == label).sum()
            assert counted["negative_flips"] == flips[new.labels == label].sum()
    assert np.isnan(table.loc[("old", "old"), "negative_flip_rate"])  # the reference itself
    # old queries on the new gallery: against new -> new, what that gallery's users get
    own = dict(zip(new.ids, reference(new.vectors, new.labels, new.vectors, new.labels, new.ids, new.ids,
                                      topk=(1,))["top1"]))
    hits = reference(old.vectors, old.labels, new.vectors, new.labels, old.ids, new.ids, topk=(1,))["top1"]
    expected = np.mean([own[i] == 1 and hit == 0 for i, hit in zip(old.ids, hits)])
    assert table.loc[("old", "new"), "negative_flip_rate"] == pytest.approx(expected) and expected > 0
    assert "flips_within_limit" not in table.columns  # reported, not judged, without a limit


def test_a_flip_limit_fails_a_pair_that_meets_the_criterion():
    sets = _sets(np.random.default_rng(3))
    sets["new"] = replace(sets["new"], vectors=sets["new"].vectors * 0 + _centers_of(sets["new"]))  # a clear upgrade
    entries = {name: MatrixEntry.plain(name, embeddings, "old") for name, embeddings in sets.items()}
    options = ScoreConfig(topk=[1])
    rate = score_pairs(entries, MatrixRoles(old="old"), options).table.set_index(
        ["query_model", "gallery_model"]).loc[("new", "old"), "negative_flip_rate"]
    for limit, allowed in ((rate, True), (rate - 1e-9, False)):
        limited = ScoreConfig(topk=[1], max_flip_rate=limit)
        table = score_pairs(entries, MatrixRoles(old="old"), limited).table
        row = table[(table.query_model == "new") & (table.gallery_model == "old")].iloc[0].to_dict()
        assert row["verdict_top1"] == "met" and row["flips_within_limit"] == allowed
        assert pair_decision(row) is (Decision.SHIP if allowed else Decision.BACKFILL)
        assert row["decision"] == pair_decision(row)


def test_a_flip_limit_needs_top1():
    with pytest.raises(ValueError, match=r"max_flip_rate: negative flips are counted at top-1, which topk \[5\]"):
        ScoreConfig(topk=[5], max_flip_rate=0.1)


def test_a_lineage_route_over_the_flip_limit_is_no_route():
    cells = {("v1", "v1"): {"top1": 0.70}, ("v2", "v1"): {"top1": 0.75, "verdict_top1": "met",
                                                          "negative_flip_rate": 0.09, "flips_within_limit": False}}
    decided = verdict("v2", "v1", lambda q, g: cells.get((q, g)), "v2", "v1")
    assert decided.decision is Decision.BACKFILL and decided.numbers["negative_flip_rate"] == 0.09
    cells["v2", "v1"]["flips_within_limit"] = True
    assert verdict("v2", "v1", lambda q, g: cells.get((q, g)), "v2", "v1").decision is Decision.SHIP
