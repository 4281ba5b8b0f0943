"""The criterion, the update gain and the cell lookup, and their one edge rule."""

import math

import pandas as pd
import pytest

from pipeline.score.criteria import beats, cell, pair_row, update_gain
from pipeline.score.matrix import add_criteria


def test_the_criterion_is_strict_and_nan_never_passes():
    assert beats(0.81, 0.80) and not beats(0.80, 0.80) and not beats(0.79, 0.80)
    assert not beats(math.nan, 0.5) and not beats(0.5, math.nan)


def test_the_gain_is_undefined_unless_the_reference_beats_the_old_model():
    assert update_gain(0.85, 0.80, 0.90) == pytest.approx(0.5)
    assert update_gain(0.75, 0.80, 0.90) == pytest.approx(-0.5)
    for reference in (0.80, 0.70, math.nan):  # no upgrade: a tie, a worse model (the sign would flip), no cell
        assert math.isnan(update_gain(0.85, 0.80, reference))


def test_cells_are_looked_up_by_pair_and_metric():
    table = pd.DataFrame([{"query_model": "a", "gallery_model": "b", "top1": 0.5}])
    assert cell(table, "a", "b", "top1") == 0.5 and pair_row(table, "a", "b")["top1"] == 0.5
    assert math.isnan(cell(table, "b", "a", "top1")) and math.isnan(cell(table, "a", "b", "map"))
    assert pair_row(table, "b", "a") is None


def test_the_report_leaves_the_gain_empty_when_the_independent_model_is_no_upgrade():
    values = {("old", "old"): 0.80, ("ind", "ind"): 0.70, ("new", "old"): 0.85, ("new", "new"): 0.9}
    table = add_criteria(pd.DataFrame([{"query_model": q, "gallery_model": g, "top1": v} for (q, g), v in values.items()]),
                         independent="ind", old="old")
    assert table.update_gain_top1.isna().all()  # 43d4a71 printed (0.85 - 0.80) / (0.70 - 0.80) = -0.5 here
