import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.config import ScoreConfig
from pipeline.data.embeddings import EmbeddingSet
from pipeline.encode.mapped import map_embeddings
from pipeline.score.entries import MatrixEntry, counterpart_pairs, model_pairs
from pipeline.score.matrix import add_intervals, matrix, score_all_pairs
from pipeline.score.pairs import QueryValues


def test_mapped_set_holds_the_transformed_vectors(tmp_path):
    source = EmbeddingSet(path="src", model_id="m-1", model_name="m", ids=np.array(["a", "b"], dtype=object),
                          labels=np.array([0, 1]), vectors=np.array([[1.0, 2.0], [3.0, 4.0]], np.float32),
                          classes=["x", "y"])
    projection = torch.nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        projection.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    mapped = map_embeddings(source, projection, "m.t21", "m-1.t21", tmp_path / "m.t21").load()
    assert mapped.model_name == "m.t21" and mapped.dim == 3 and mapped.ids.tolist() == ["a", "b"]
    unit = np.array([[1, 2] / np.sqrt(5), [0.6, 0.8]])  # transformations map unit vectors
    assert np.allclose(mapped.vectors, np.c_[unit, unit.sum(axis=1)], atol=1e-6)


def test_forward_gallery_is_judged_against_old_old_and_other_dimensions_are_absent():
    rows = [("old", "old", 0.80), ("new", "new", 0.90), ("new", "old.t12.new", 0.85), ("old.t12.new", "old.t12.new", 0.95)]
    table = pd.DataFrame([{"query_model": q, "gallery_model": g, "top1": v, "map": v} for q, g, v in rows])
    ids = np.array([f"q{i}" for i in range(400)], dtype=object)

    def hits(rate):  # each query's hit, 0/1, ordered so that pairs differ on whole queries
        return (np.arange(400) < rate * 400).astype(float)

    queries = {(q, g): QueryValues(ids, np.zeros(400, int), {"top1": hits(v), "map": hits(v)}) for q, g, v in rows}
    table = add_intervals(table, queries, {"old.t12.new": "old"}, None).set_index(["query_model", "gallery_model"])
    assert table.loc[("new", "old.t12.new"), "delta_top1"] == pytest.approx(0.05)  # against old/old 0.80
    assert table.loc[("new", "old.t12.new"), "verdict_top1"] == "met"
    assert pd.isna(table.loc[("new", "new"), "verdict_top1"])
    grid = matrix(table.reset_index(), "top1", ["old", "new"])
    assert np.isnan(grid.loc["old", "new"]) and grid.loc["new", "new"] == pytest.approx(0.90)


def test_counterpart_pairs_score_each_entry_against_what_it_is_compatible_with():

    def of_dim(dim):
        return EmbeddingSet(path="p", model_id="m", model_name="m", ids=np.array(["a"], dtype=object),
                            labels=np.array([0]), vectors=np.zeros((1, dim), np.float32), classes=["x"])

    entries = {"old": MatrixEntry(of_dim(4), "old", "none", "old", "old"),
               "new": MatrixEntry(of_dim(4), "new", "none", "old", "new"),
               "wide": MatrixEntry(of_dim(8), "wide", "none", "old", "wide"),
               "new.t21": MatrixEntry(of_dim(4), "new.t21", "T21 of new", "old", "new"),
               "old.t12.new": MatrixEntry(of_dim(4), "old", "T12 of new", "new", "new")}
    assert counterpart_pairs(entries) == [("old", "old"), ("new", "new"), ("wide", "wide"), ("new", "old"),
                                          ("new.t21", "old"), ("old.t12.new", "new"), ("new", "old.t12.new")]
    assert model_pairs(entries) == [("old", "old"), ("old", "new"), ("new", "old"), ("new", "new"), ("wide", "wide"),
                                    ("new.t21", "old"), ("old.t12.new", "new"), ("new", "old.t12.new")]


def test_all_pairs_by_default_and_only_pairs_of_one_dimension():

    rng = np.random.default_rng(0)

    def embedding_set(name, dim):
        return EmbeddingSet(path=name, model_id=name, model_name=name, ids=np.array([f"i{k}" for k in range(6)], dtype=object),
                            labels=np.array([0, 0, 0, 1, 1, 1]), vectors=rng.normal(size=(6, dim)).astype(np.float32),
                            classes=["x", "y"])

    sets = {"old": embedding_set("old", 4), "new": embedding_set("new", 4), "wide": embedding_set("wide", 8)}
    entries = {name: MatrixEntry.plain(name, embeddings, "old") for name, embeddings in sets.items()}
    table = score_all_pairs(entries, options=ScoreConfig(topk=[1]))
    assert sorted(zip(table.query_model, table.gallery_model)) == [
        ("new", "new"), ("new", "old"), ("old", "new"), ("old", "old"), ("wide", "wide")]
    chosen = score_all_pairs(entries, options=ScoreConfig(topk=[1]), pairs=[("new", "old"), ("old", "old")])
    assert list(zip(chosen.query_model, chosen.gallery_model)) == [("new", "old"), ("old", "old")]
    assert chosen.reference_model.isna().tolist() == chosen.decision.isna().tolist() == [False, True]
    assert chosen.reference_model.iloc[0] == "old"
