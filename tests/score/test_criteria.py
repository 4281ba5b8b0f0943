"""The criterion's verdicts and the decision they support, the update gain and the cell lookup."""

import math

import pandas as pd
import pytest

from pipeline.score.criteria import (
    Decision,
    beats,
    cell,
    combined_verdict,
    pair_decision,
    pair_row,
    pair_verdict,
    update_gain,
)
from pipeline.score.matrix import add_update_gains
from pipeline.score.uncertainty import MET, NO_QUERIES, NOT_MET, WITHIN_NOISE


def test_an_estimate_is_strict_and_nan_never_passes():
    assert beats(0.81, 0.80) and not beats(0.80, 0.80) and not beats(0.79, 0.80)
    assert not beats(math.nan, 0.5) and not beats(0.5, math.nan)


def test_metrics_combine_to_not_met_when_one_is_not_met_and_met_only_when_all_are():
    assert combined_verdict([MET, MET]) == MET
    assert combined_verdict([MET, WITHIN_NOISE]) == WITHIN_NOISE
    assert combined_verdict([WITHIN_NOISE, NOT_MET]) == NOT_MET and combined_verdict([MET, NOT_MET]) == NOT_MET
    assert combined_verdict([MET, None]) is None and combined_verdict([MET, NO_QUERIES]) is None
    assert combined_verdict([]) is None


def test_a_pair_ships_only_when_met_and_within_the_flip_limit():
    row = {"query_model": "new", "gallery_model": "old", "top1": 0.85, "map": 0.6,
           "verdict_top1": MET, "verdict_map": MET}
    assert pair_decision(row) is Decision.SHIP
    assert pair_decision({**row, "verdict_map": WITHIN_NOISE}) is Decision.INCONCLUSIVE
    assert pair_decision({**row, "verdict_map": NOT_MET}) is Decision.BACKFILL
    assert pair_decision({**row, "flips_within_limit": False}) is Decision.BACKFILL
    assert pair_decision({**row, "verdict_map": None}) is None  # the reference was not scored: not judged
    assert pair_decision({k: v for k, v in row.items() if k not in ("map", "verdict_map")}) is Decision.SHIP  # top-k only
    # per query subset, from its own columns
    assert pair_verdict({**row, "top1_seen": 0.8, "map_seen": 0.5, "verdict_top1_seen": WITHIN_NOISE,
                         "verdict_map_seen": MET}, "_seen") == WITHIN_NOISE


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
    table = add_update_gains(pd.DataFrame([{"query_model": q, "gallery_model": g, "top1": v}
                                           for (q, g), v in values.items()]), independent="ind", old="old")
    assert table.update_gain_top1.isna().all()  # 43d4a71 printed (0.85 - 0.80) / (0.70 - 0.80) = -0.5 here
