"""Pairs scored in Ray tasks (``score.in_ray``) make the report one process makes."""

from __future__ import annotations

import pandas as pd
import pytest

from pipeline.config import ScoreConfig
from pipeline.data.embeddings import embeddings_table, open_embeddings, read_embeddings, write_embeddings
from pipeline.score.entries import MatrixEntry, MatrixRoles
from pipeline.score.matrix import score_all_pairs
from pipeline.score.on_ray import gallery_groups
from tests.jobs.helpers import synthetic_sets

CLASSES = ["a", "b", "c", "d"]


def same_report(found: pd.DataFrame, expected: pd.DataFrame) -> None:
    """Equal tables: the same rows in the same order, numbers equal to the last bits."""
    pd.testing.assert_frame_equal(found, expected, check_exact=False, rtol=0, atol=1e-12)


@pytest.mark.ray
def test_pairs_scored_in_ray_tasks_make_the_report_of_one_process(ray_cluster, tmp_path):
    sets = synthetic_sets(tmp_path, 300, CLASSES)
    entries = {name: MatrixEntry.plain(name, open_embeddings(sets["test", name]), "old")
               for name in ("old", "new", "rotated")}
    roles = MatrixRoles(old="old", old_classes=["a", "b"])
    alone = score_all_pairs(entries, roles, ScoreConfig(topk=[1, 5]))
    spread = score_all_pairs(entries, roles, ScoreConfig(topk=[1, 5], in_ray=True))
    assert len(alone) == 9 and {"negative_flip_rate", "delta_top1_low", "verdict_map_seen", "decision"} <= set(alone.columns)
    same_report(spread, alone)


@pytest.mark.ray
def test_a_pair_split_into_tasks_of_its_gallery_files_scores_as_one_process(ray_cluster, tmp_path, monkeypatch):
    sets = synthetic_sets(tmp_path, 300, CLASSES)
    whole = read_embeddings(sets["test", "new"])
    for part, start in enumerate(range(0, 300, 100)):  # the new model's gallery in three part files
        rows = slice(start, start + 100)
        write_embeddings(tmp_path / "parts" / f"part-{part:05d}.parquet",
                         embeddings_table(list(whole.ids[rows]), whole.labels[rows], whole.vectors[rows],
                                          whole.model_id, whole.model_name, CLASSES))
    entries = {"old": MatrixEntry.plain("old", open_embeddings(sets["test", "old"]), "old"),
               "new": MatrixEntry.plain("new", open_embeddings(tmp_path / "parts"), "old")}
    options = ScoreConfig(topk=[1, 5], in_ray=True, split_rows=120)
    assert [group.offset for group in gallery_groups(entries["new"].embeddings, options)] == [0, 100, 200]
    alone = score_all_pairs(entries, MatrixRoles(old="old"), ScoreConfig(topk=[1, 5]))
    monkeypatch.setattr("pipeline.score.on_ray.SCORE_BUDGET_BYTES", 8 * 300 * 50)  # the ranking in 6 query chunks
    same_report(score_all_pairs(entries, MatrixRoles(old="old"), options), alone)
