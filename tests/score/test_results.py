"""The results table folds seeds from report cells: checked on a hand-made report."""

import numpy as np
import pandas as pd
import pytest

from pipeline.config import pipeline_from_dict
from pipeline.score.results import claim_checks, fold_seeds, scenario_markdown, seed_rows

CFG = pipeline_from_dict({"old": {"name": "old"}, "seeds": [0, 1],
                          "new": [{"name": "ind"}, {"name": "lce", "method": "lce_backward"}]})

# (query, gallery): top1 for seed 0 and seed 1 (the old/old cell is shared); mAP = top1 - 0.1
CELLS = {("old", "old"): (0.70, 0.70), ("ind", "ind"): (0.90, 0.86), ("lce", "lce"): (0.89, 0.85),
         ("ind", "old"): (0.10, 0.12), ("lce", "old"): (0.60, 0.66), ("lce.t21", "old"): (0.75, 0.72)}


def _named(model, seed):
    """The report's name of a model of one seed: ``lce`` -> ``lce-s1``, ``lce.t21`` -> ``lce-s1.t21``."""
    if model == "old":
        return model
    base, dot, suffix = model.partition(".")
    return f"{base}-s{seed}{dot}{suffix}"


def _report():
    rows = [{"query_model": _named(q, seed), "gallery_model": _named(g, seed), "top1": values[seed],
             "map": values[seed] - 0.1} for seed in (0, 1) for (q, g), values in CELLS.items()]
    return pd.DataFrame(rows).drop_duplicates(["query_model", "gallery_model"])


def _entries():
    entries = {"old": {"transform": "none", "counterpart": "old", "base": "old", "reference": "old"}}
    for seed in (0, 1):
        for model in ("ind", "lce"):
            entries[f"{model}-s{seed}"] = {"transform": "none", "counterpart": "old", "base": f"{model}-s{seed}",
                                           "reference": f"{model}-s{seed}"}
        entries[f"lce-s{seed}.t21"] = {"transform": f"T21 of lce-s{seed} (new -> old)", "counterpart": "old",
                                       "base": f"lce-s{seed}", "reference": f"lce-s{seed}.t21"}
    return entries


def test_seed_rows_take_each_entry_from_its_cells():
    rows = seed_rows(_report(), _entries(), CFG).set_index(["entry", "seed"])
    t21 = rows.loc[("lce.t21", 1)]
    assert t21.method == "lce_backward" and t21.route == "T21" and t21["transform"] == "T21 of lce (new -> old)"
    assert t21.new_old_top1 == pytest.approx(0.72) and t21.new_new_top1 == pytest.approx(0.85)
    assert bool(t21.pass_top1) and bool(t21.pass_map)
    # update gain against the independent model of the same seed: (0.72 - 0.70) / (0.86 - 0.70)
    assert t21.update_gain_top1 == pytest.approx(0.02 / 0.16)
    assert not rows.loc[("lce", 0)].pass_top1


def test_folding_gives_mean_spread_and_passes_per_seed():
    folded = fold_seeds(seed_rows(_report(), _entries(), CFG)).set_index("entry")
    assert folded.loc["lce.t21", "new_old_top1"] == pytest.approx(0.735)
    assert folded.loc["lce.t21", "new_old_top1_sd"] == pytest.approx(np.std([0.72, 0.75], ddof=1))
    assert folded.loc["lce.t21", "pass_top1"] == 2 and folded.loc["ind", "pass_top1"] == 0
    assert (folded.seeds == 2).all()
    text = "\n".join(scenario_markdown("demo", folded.reset_index(), has_subsets=False))
    # mean ± sample standard deviation: 0.89 and 0.85 give 87.0 ± 2.8; 0.75 and 0.72 give 73.5 ± 2.1
    assert "| lce.t21 | lce_backward | T21 | 87.0 ± 2.8 | 73.5 ± 2.1 | 63.5 ± 2.1 |" in text
    assert "pass 2/2" in text and "FAIL 0/2" in text
    assert ("independent new/new top-1 88.0 ± 2.8: +18.0 points over old/old, an upgrade of at least 3 points "
            "in 2/2 seeds") in text


def test_claims_follow_the_table():
    checks = dict(claim_checks(fold_seeds(seed_rows(_report(), _entries(), CFG)), has_subsets=False))
    assert checks["lce.t21 (T21) meets the criterion in every seed"] is True
    assert checks["lce new/new top-1 within 2 points of independent"] is True  # 0.87 vs 0.88
    assert checks["independent fails the criterion"] is True
    upgrade = "an upgrade: independent new/new top-1 at least 3 points over old/old in every seed"
    assert checks[upgrade] is True
    assert not any("lce (direct) meets" in claim for claim in checks)  # backward is judged through T21


def test_an_upgrade_must_hold_in_every_seed():
    report = _report()
    report.loc[report.query_model.eq("ind-s1") & report.gallery_model.eq("ind-s1"), "top1"] = 0.72  # +2 points
    checks = dict(claim_checks(fold_seeds(seed_rows(report, _entries(), CFG)), has_subsets=False))
    assert checks["an upgrade: independent new/new top-1 at least 3 points over old/old in every seed"] is False
