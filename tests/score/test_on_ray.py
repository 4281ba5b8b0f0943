"""Pairs scored in Ray tasks (``score.in_ray``) make the report one process makes."""

from __future__ import annotations

import pandas as pd
import pytest

from pipeline.config import ScoreConfig
from pipeline.data.embeddings import open_embeddings
from pipeline.score.entries import MatrixEntry, MatrixRoles
from pipeline.score.matrix import score_all_pairs
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
    assert len(alone) == 9 and {"negative_flip_rate", "delta_top1_low", "compatible_map_seen"} <= set(alone.columns)
    same_report(spread, alone)
