"""Paired bootstrap intervals of criterion cells, against a direct computation."""

import itertools

import numpy as np
import pytest

from pipeline.config import ScoreConfig
from pipeline.data.embeddings import EmbeddingSet
from pipeline.score.entries import MatrixEntry, MatrixRoles
from pipeline.score.matrix import score_all_pairs
from pipeline.score.pairs import QueryValues
from pipeline.score.uncertainty import MET, NO_QUERIES, NOT_MET, WITHIN_NOISE, Interval, aligned, paired_interval
from tests.reference import reference


def test_the_bootstrap_interval_is_the_percentile_interval_of_every_resample():
    """Five queries: all 5^5 resamples enumerated give the exact bootstrap distribution of the
    mean difference; 20,000 seeded resamples land on its 2.5 and 97.5 percentiles."""
    values, baseline = np.array([1.0, 1.0, 0.0, 1.0, 0.5]), np.array([0.0, 1.0, 0.0, 0.0, 1.0])
    differences = values - baseline
    exact = np.array([differences[list(pick)].mean() for pick in itertools.product(range(5), repeat=5)])
    low, high = np.percentile(exact, [2.5, 97.5])
    interval = paired_interval(values, baseline, resamples=20_000)
    assert interval.delta == pytest.approx(differences.mean())
    assert interval.low == pytest.approx(low, abs=0.02) and interval.high == pytest.approx(high, abs=0.02)
    assert paired_interval(values, baseline, resamples=20_000) == interval  # seeded


def test_queries_without_a_value_leave_the_pairing_and_verdicts_follow_the_interval():
    values, baseline = np.array([1.0, np.nan, 1.0, 1.0]), np.array([0.0, 0.0, np.nan, 0.0])
    interval = paired_interval(values, baseline)
    assert interval.delta == interval.low == interval.high == 1.0  # queries 0 and 3 only
    assert interval.verdict == MET
    assert Interval(-0.1, -0.2, 0.0).verdict == NOT_MET
    assert Interval(0.01, -0.01, 0.03).verdict == WITHIN_NOISE
    assert Interval(float("nan"), float("nan"), float("nan")).verdict == NO_QUERIES
    with pytest.raises(ValueError, match="paired values"):
        paired_interval(np.ones(3), np.ones(4))


def test_the_reference_is_aligned_by_query_id():
    assert aligned(np.array(["b", "a"]), np.array(["a", "b"]), np.array([1.0, 2.0]), "x").tolist() == [2.0, 1.0]
    with pytest.raises(ValueError, match="pair new -> old: the pair and its reference were scored on different"):
        aligned(np.array(["a", "c"]), np.array(["a", "b"]), np.array([1.0, 2.0]), "pair new -> old")


def test_report_cells_carry_the_difference_with_old_old_its_interval_and_verdict(tmp_path):
    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(4), 30)
    centers = rng.normal(size=(4, 8))
    ids = np.array([f"i{k}" for k in range(len(labels))], dtype=object)
    spread = {"old": 1.5, "new": 0.3}
    sets = {name: EmbeddingSet(name, f"{name}-1", name, ids, labels,
                               (centers[labels] + rng.normal(scale=scale, size=(len(labels), 8))).astype(np.float32),
                               ["a", "b", "c", "d"]) for name, scale in spread.items()}
    # The new model's query set in another order: the pairing goes by id.
    order = rng.permutation(len(labels))
    new = sets["new"]
    sets["new"] = EmbeddingSet("new", "new-1", "new", new.ids[order], new.labels[order], new.vectors[order], new.classes)
    entries = {name: MatrixEntry.plain(name, embeddings, "old") for name, embeddings in sets.items()}
    options = ScoreConfig(topk=[1], bootstrap_resamples=500)
    table = score_all_pairs(entries, MatrixRoles(old="old", old_classes=["a", "b"]), options, pair_dir=tmp_path)
    table = table.set_index(["query_model", "gallery_model"])
    row = table.loc[("new", "old")]
    old_old = reference(sets["old"].vectors, labels, sets["old"].vectors, labels, ids, ids)
    new_old = reference(sets["new"].vectors, sets["new"].labels, sets["old"].vectors, labels, sets["new"].ids, ids)
    by_id = dict(zip(sets["new"].ids, new_old["top1"]))
    differences = np.array([by_id[i] for i in ids]) - old_old["top1"]
    assert row["delta_top1"] == pytest.approx(differences.mean())
    assert row["delta_top1"] == pytest.approx(row["top1"] - table.loc[("old", "old"), "top1"])
    assert row["delta_top1_low"] <= row["delta_top1"] <= row["delta_top1_high"]
    # in the pair's query order, as the report resamples them
    expected = paired_interval(new_old["top1"], aligned(sets["new"].ids, ids, old_old["top1"], "x"), 500)
    assert (row["delta_top1_low"], row["delta_top1_high"]) == pytest.approx((expected.low, expected.high))
    assert row["verdict_top1"] == expected.verdict
    seen = labels < 2
    assert row["delta_map_unseen"] == pytest.approx(
        np.mean(np.array([dict(zip(sets["new"].ids, new_old["ap"]))[i] for i in ids])[~seen] - old_old["ap"][~seen]))
    assert table.loc[("old", "old"), ["delta_top1", "verdict_top1"]].isna().all()  # the diagonal has no criterion
    # A rerun reads every pair's per-query values back and gives the same intervals.
    again = score_all_pairs(entries, MatrixRoles(old="old", old_classes=["a", "b"]), options, pair_dir=tmp_path)
    assert again.set_index(["query_model", "gallery_model"]).loc[("new", "old"), "delta_top1_low"] == row["delta_top1_low"]
    stored, key = QueryValues.load(tmp_path / "new__old.queries.npz")
    assert stored.ids.tolist() == sets["new"].ids.tolist() and key["query"]["model_id"] == "new-1"
    none = score_all_pairs(entries, options=ScoreConfig(topk=[1], bootstrap_resamples=0))
    assert not any(column.startswith(("delta_", "verdict_")) for column in none.columns)
