"""The compatibility guard and the gallery index behind it: every refusal with its message, the
override and its record, backfill steps that replace vectors, and the jobs.index commands on a
report written by jobs.score."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import ScoreConfig
from pipeline.data.embeddings import embeddings_table, read_embeddings, write_embeddings
from pipeline.index.guard import IncompatibleModels, ModelRef, read_report
from pipeline.index.store import add_vectors, create_index, open_index, search_index
from pipeline.score.entries import MatrixEntry, MatrixRoles
from pipeline.score.matrix import score_all_pairs
from pipeline.score.report import write_tables
from tests.jobs.helpers import run_job, synthetic_sets

CLASSES = ["a", "b", "c", "d"]
SIZE = 300


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    return synthetic_sets(tmp_path_factory.mktemp("sets"), SIZE, CLASSES)


@pytest.fixture(scope="module")
def report(sets, tmp_path_factory):
    """The compatibility report of the three test sets, as jobs.score writes it."""
    test = {name: read_embeddings(sets["test", name]) for name in ("old", "new", "rotated")}
    entries = {name: MatrixEntry.plain(name, found, "old") for name, found in test.items()}
    table = score_all_pairs(entries, MatrixRoles(old="old"), ScoreConfig(topk=[1]))
    folder = tmp_path_factory.mktemp("report")
    write_tables(table, folder)
    return folder


def test_the_report_says_which_pairs_are_compatible(report):
    table = read_report(report).set_index(["query_model", "gallery_model"])
    assert table.loc[("new", "old"), "query_model_id"] == "new-card"
    assert table.loc[("new", "old"), "gallery_model_id"] == "old-card"
    assert table.loc[("new", "old"), "decision"] == "ship" and table.loc[("rotated", "old"), "decision"] == "backfill"


def test_every_refusal_names_both_models_and_where_the_report_is(sets, report, tmp_path):
    index = create_index(read_embeddings(sets["test", "old"]), tmp_path / "index", "flat")
    new, rotated = read_embeddings(sets["test", "new"]), read_embeddings(sets["test", "rotated"])
    with pytest.raises(IncompatibleModels) as refused:
        add_vectors(index, new)
    message = str(refused.value)
    assert f"{tmp_path / 'index'}: refused to add vectors to the index: new (new-card)'s vectors would meet " \
           "old (old-card)'s, and no compatibility report was given" in message
    assert "--report <report folder>" in message and "--override" in message
    with pytest.raises(IncompatibleModels, match=r"says rotated -> old needs a backfill \(top1 -\d+\.\d\d \[-[\d.]+, "
                                                 r"-[\d.]+\] not met; map -"):
        add_vectors(index, rotated, reports=[read_report(report)])
    with pytest.raises(IncompatibleModels, match=rf"{report / 'report.parquet'} says rotated -> old"):
        search_index(index, rotated, 5, reports=[read_report(report)])
    only_old = read_report(report).query("query_model == 'old'")  # a report that never scored the new model
    with pytest.raises(IncompatibleModels, match="has no row for new's queries on old's gallery"):
        add_vectors(index, new, reports=[only_old])
    with pytest.raises(IncompatibleModels, match=r"search the index: new \(new-card\)'s vectors would meet old"):
        search_index(index, new, 5)
    reopened = open_index(tmp_path / "index")  # nothing refused was written
    assert set(reopened.items.model_id) == {"old-card"} and len(reopened.meta["history"]) == 1


def test_a_report_from_before_the_guard_is_named(report, tmp_path):
    pd.read_parquet(report / "report.parquet").drop(columns=["query_model_id"]).to_parquet(tmp_path / "old.parquet")
    with pytest.raises(ValueError, match="old.parquet: the report has no model ids"):
        read_report(tmp_path / "old.parquet")
    with pytest.raises(FileNotFoundError, match="no compatibility report"):
        read_report(tmp_path / "nowhere")


def test_a_compatible_pair_is_backfilled_and_searched_with_the_new_queries(sets, report, tmp_path):
    old, new = read_embeddings(sets["test", "old"]), read_embeddings(sets["test", "new"])
    index = create_index(old, tmp_path / "index", "ivf-flat")
    first = new.ids[:100]
    record = add_vectors(index, new, first, reports=[read_report(report)])
    assert (record["replaced"], record["appended"], record["overrides"]) == (100, 0, [])
    reopened = open_index(tmp_path / "index")
    assert reopened.items.set_index("id").loc[list(first), "model_id"].eq("new-card").all()
    assert reopened.items.model_id.value_counts().to_dict() == {"new-card": 100, "old-card": SIZE - 100}
    assert reopened.held == [ModelRef("old-card", "old"), ModelRef("new-card", "new")]
    # every list probed: the index answers as exact search on the mixed gallery does
    reopened.index.nprobe = reopened.index.nlist
    found = search_index(reopened, new, 3, reports=[read_report(report)])
    mixed = old.vectors.copy()
    mixed[:100] = new.vectors[:100]
    unit = lambda rows: rows / np.linalg.norm(rows, axis=1, keepdims=True)  # noqa: E731
    expected = np.argsort(-(unit(new.vectors) @ unit(mixed).T), axis=1, kind="stable")[:, :3]
    assert found.id.to_numpy().reshape(SIZE, 3).tolist() == old.ids[expected].tolist()
    assert set(found.model_id) == {"old-card", "new-card"}


def test_an_override_lets_a_refused_pair_through_logged_and_kept_in_the_history(sets, tmp_path, caplog):
    index = create_index(read_embeddings(sets["test", "old"]), tmp_path / "index", "flat")
    caplog.set_level(logging.WARNING)
    record = add_vectors(index, read_embeddings(sets["test", "rotated"]), override="A/B test on 1 % of traffic")
    assert record["overrides"][0]["held"] == "old-card" and record["overrides"][0]["arriving"] == "rotated-card"
    assert "no compatibility report was given (override: A/B test on 1 % of traffic)" in caplog.text
    history = json.loads((tmp_path / "index" / "index.json").read_text())["history"]
    assert history[-1]["overrides"][0]["override"] == "A/B test on 1 % of traffic"
    assert open_index(tmp_path / "index").items.model_id.eq("rotated-card").all()  # every item replaced


def test_bad_sets_and_a_cut_index_are_named(sets, tmp_path):
    old = read_embeddings(sets["test", "old"])
    index = create_index(old, tmp_path / "index", "flat")
    with pytest.raises(FileExistsError, match="an index is already there"):
        create_index(old, tmp_path / "index", "flat")
    with pytest.raises(ValueError, match="index kind 'hnsw'"):
        create_index(old, tmp_path / "other", "hnsw")
    other = (old.labels[:2] + 1) % len(CLASSES)
    relabelled = embeddings_table(list(old.ids[:2]), other, old.vectors[:2], "old-card", "old", CLASSES)
    write_embeddings(tmp_path / "relabelled" / "part-00000.parquet", relabelled)
    with pytest.raises(ValueError, match=f"relabelled: item 'test-0000' has label {other[0]}, the index .* holds it "
                                         f"with label {old.labels[0]}"):
        add_vectors(index, read_embeddings(tmp_path / "relabelled"))
    with pytest.raises(ValueError, match="the ids to add repeat 'test-0001'"):
        add_vectors(index, old, ids=["test-0001", "test-0002", "test-0001"])
    meta = json.loads((tmp_path / "index" / "index.json").read_text())
    (tmp_path / "index" / "index.json").write_text(json.dumps({**meta, "rows": SIZE + 1}))
    with pytest.raises(ValueError, match=f"index-000000.faiss holds {SIZE} vectors, items-000000.parquet {SIZE} "
                                         f"items, index.json says {SIZE + 1}"):
        open_index(tmp_path / "index")
    (tmp_path / "index" / "index.json").write_text(json.dumps({**meta, "generation": 7}))
    with pytest.raises(FileNotFoundError, match="index.json names index-000007.faiss, items-000007.parquet, which is missing"):
        open_index(tmp_path / "index")


def test_a_write_cut_short_leaves_the_index_as_it_was(sets, report, tmp_path):
    """A backfill step whose process dies after writing the next generation's files, before
    index.json names them: readers still get the index as it was, and the next step proceeds."""
    index = create_index(read_embeddings(sets["test", "old"]), tmp_path / "index", "flat")
    cut = open_index(tmp_path / "index")
    cut.items = cut.items.assign(model_id="new-card")  # what the dying step had written
    cut.meta["generation"] += 1
    pq.write_table(pa.Table.from_pandas(cut.items, preserve_index=False), tmp_path / "index" / "items-000001.parquet")
    reopened = open_index(tmp_path / "index")
    assert set(reopened.items.model_id) == {"old-card"} and reopened.meta["generation"] == 0
    with pytest.raises(IncompatibleModels):  # the old model's index still refuses the new queries
        search_index(reopened, read_embeddings(sets["test", "new"]), 5)
    add_vectors(reopened, read_embeddings(sets["test", "new"]), reports=[read_report(report)])
    assert sorted(path.name for path in (tmp_path / "index").iterdir()) == [
        "index-000001.faiss", "index.json", "items-000001.parquet"]  # the next step overwrote the leftover
    stale = open_index(tmp_path / "index")
    search_index(stale, read_embeddings(sets["test", "old"]), 5, override="a one-off comparison")  # recorded
    with pytest.raises(ValueError, match="changed by another writer since it was opened"):
        add_vectors(reopened, read_embeddings(sets["test", "new"]), reports=[read_report(report)])
    with pytest.raises(ValueError, match="changed by another writer since it was opened"):
        add_vectors(index, read_embeddings(sets["test", "new"]), reports=[read_report(report)])


def test_one_refusing_report_outweighs_one_allowing_and_a_pair_scored_twice_is_named(sets, report, tmp_path):
    index = create_index(read_embeddings(sets["test", "old"]), tmp_path / "index", "flat")
    allowing = read_report(report)
    refusing = allowing.assign(report="other.parquet")
    pair = (refusing.query_model == "new") & (refusing.gallery_model == "old")
    refusing.loc[pair, "verdict_map"] = "not met"
    new = read_embeddings(sets["test", "new"])
    with pytest.raises(IncompatibleModels, match=r"other.parquet says new -> old needs a backfill \(top1 .* met; map "
                                                 r".* not met\)"):
        add_vectors(index, new, reports=[allowing, refusing])
    noisy = allowing.assign(report="noisy.parquet")
    noisy.loc[pair, "verdict_map"] = "within noise"  # inconclusive refuses too, and says what settles it
    with pytest.raises(IncompatibleModels, match=r"noisy.parquet finds new -> old inconclusive \(.*map .* within noise\): "
                                                 "score the pair on more queries, or backfill"):
        add_vectors(index, new, reports=[noisy])
    twice = pd.concat([allowing, allowing[(allowing.query_model == "new") & (allowing.gallery_model == "old")]])
    with pytest.raises(ValueError, match="2 rows for new's queries on old's gallery"):
        add_vectors(index, new, reports=[twice])
    unjudged = allowing.assign(verdict_top1=None, verdict_map=None)
    with pytest.raises(IncompatibleModels, match="cannot judge new -> old: old/old was not scored, or the report has "
                                                 "no interval"):
        add_vectors(index, new, reports=[unjudged])


def test_the_index_commands_take_a_gallery_from_its_old_model_to_the_new_one(sets, tmp_path, caplog, capsys):
    index, order, report = tmp_path / "index", tmp_path / "order.csv", tmp_path / "report"
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert run_job("score", "--embeddings", sets["test", "old"], sets["test", "new"], "--old", "old", "--topk", 1,
                   "--out", report, "--tracking-uri", tracking, caplog=caplog)[0] == 0
    assert run_job("index", "build", "--embeddings", sets["test", "old"], "--out", index, "--kind", "ivf-pq",
                   "--pq-bytes", 4, caplog=caplog)[0] == 0
    assert run_job("index", "order", "--gallery", sets["test", "old"], "--parent-train", sets["train", "old"],
                   "--new-train", sets["train", "new"], "--out", order, caplog=caplog)[0] == 0
    ranked = pd.read_csv(order)
    assert sorted(ranked.id) == sorted(read_embeddings(sets["test", "old"]).ids) and ranked["rank"].tolist() == list(
        range(1, SIZE + 1))
    code, logged = run_job("index", "add", "--index", index, "--embeddings", sets["test", "new"], "--order", order,
                           "--share", 0.25, caplog=caplog)
    assert code == 2 and "no compatibility report was given" in logged
    for share, replaced in ((0.25, 75), (0.25, 0), (1.0, SIZE - 75)):  # the same step again adds nothing
        capsys.readouterr()
        assert run_job("index", "add", "--index", index, "--embeddings", sets["test", "new"], "--order", order,
                       "--share", share, "--report", report, caplog=caplog)[0] == 0
        assert f"{replaced} vectors replaced, 0 appended" in capsys.readouterr().out
    held = open_index(index).items.set_index("id").model_id
    assert held.eq("new-card").all()
    assert run_job("index", "search", "--index", index, "--queries", sets["test", "new"], "--k", 5, "--out",
                   tmp_path / "found.parquet", caplog=caplog)[0] == 0  # one model left: no report needed
    assert len(pd.read_parquet(tmp_path / "found.parquet")) == SIZE * 5
