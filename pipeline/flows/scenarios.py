"""The paper's scenarios: each config of ``configs/scenarios`` run as a pipeline (or its finished
run read again), folded over seeds into its table (``pipeline.score.results``) and written to one
Markdown file and one CSV (``docs/results.md`` for the shipped scenarios on Fashion-MNIST)."""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.atomic import write_text_atomic
from pipeline.compat.methods import Role, method_named
from pipeline.config import PipelineConfig
from pipeline.flows.configs import load_pipeline_config
from pipeline.flows.experiment import run_pipeline
from pipeline.flows.workspace import Workspace
from pipeline.runtime import init_ray
from pipeline.score import MET
from pipeline.score.results import (
    GAIN_TARGET,
    SUBSETS,
    SeedResults,
    claim_checks,
    fold_seeds,
    load_run,
    scenario_markdown,
    scenario_rows,
)

log = logging.getLogger(__name__)


def commit() -> str:
    """The checkout's short commit, or "unknown" outside a git checkout."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


@dataclass(frozen=True)
class Scenario:
    """One scenario's finished run, its table over seeds and the claims checked on it."""

    path: Path
    cfg: PipelineConfig
    table: pd.DataFrame              # the run's report
    seeds: SeedResults               # one row per (matrix entry, seed), with the per-query values behind it
    folded: pd.DataFrame             # one row per matrix entry, seeds folded
    checks: list[tuple[str, bool]]
    run: dict[str, Any]              # seconds, commit and date of the run


def finished(path: Path, root: Path) -> bool:
    """Whether ``path``'s scenario has a finished run under ``root/<name>``."""
    return Workspace.at(root / path.stem).timing.is_file()


def plan(paths: list[Path], root: Path, run: list[str] | None, reuse: bool) -> list[tuple[Path, bool]]:
    """The scenarios that make the tables, each with whether its finished run is read: all of
    ``paths`` (read again with ``reuse``), or with ``run`` those named there, run now, and every
    other one that has a finished run (the rest are left out, and logged)."""
    unknown = sorted(set(run or ()) - {path.stem for path in paths})
    if unknown:
        raise ValueError(f"--run {unknown}: no such scenario among {[path.stem for path in paths]}")
    chosen = []
    for path in paths:
        only_read = run is not None and path.stem not in run
        if only_read and not finished(path, root):
            log.warning("%s: no finished run under %s; left out of the tables", path.stem, root / path.stem)
            continue
        chosen.append((path, reuse or only_read))
    if not chosen:
        raise ValueError(f"no scenario to run and none finished under {root}")
    return chosen


def run_scenario(path: Path, overrides: dict[str, Any], root: Path, reuse: bool, ray_address: str | None) -> Scenario:
    """``path``'s pipeline under ``root/<name>`` (read again when ``reuse`` finds it finished)."""
    cfg = load_pipeline_config(path, {**overrides, "output_dir": str(root / path.stem)})
    workspace = Workspace.at(cfg.output_dir)
    timing = workspace.timing
    if not (reuse and timing.is_file()):
        init_ray(ray_address or cfg.ray_address)
        started = time.perf_counter()
        run_pipeline(cfg, workspace=workspace)
        write_text_atomic(timing, json.dumps({"seconds": time.perf_counter() - started, "commit": commit(),
                                      "date": time.strftime("%Y-%m-%d")}))
    run = load_run(workspace.report)
    seeds = scenario_rows(run, cfg, cfg.score.bootstrap_resamples or 1000, cfg.score.interval_level)
    folded = fold_seeds(seeds)
    folded.insert(0, "scenario", path.stem)
    return Scenario(path, cfg, run.table, seeds, folded, claim_checks(seeds, "top1_unseen" in run.table.columns),
                    json.loads(timing.read_text()))


def scenario_section(scenario: Scenario) -> list[str]:
    """A scenario's Markdown: its table, where its numbers come from, the claims checked."""
    cfg, run, table = scenario.cfg, scenario.run, scenario.table
    lines = scenario_markdown(f"{scenario.path.stem}: {cfg.description}", scenario.seeds, scenario.folded,
                              "top1_unseen" in table.columns)
    lines += [f"Config `{scenario.path}`, seeds {sorted({m.seed for m in cfg.new})}, {len(table)} pairs scored on the "
              f"{cfg.score.split} split ({int(table.num_queries.max())} queries); run at commit "
              f"{run.get('commit', 'unknown')} on {run.get('date', 'unknown')} in {run['seconds'] / 60:.1f} min.", "",
              "Claims checked on this table:", ""]
    return lines + [f"- {'yes' if ok else '**no**'}: {claim}" for claim, ok in scenario.checks] + [""]


def results_header(csv_path: Path, data_source: str, minutes: float) -> list[str]:
    return [
        "# Results: every LCE manner and baseline, per scenario",
        "",
        "Generated by `python -m jobs.results` (`make results`); do not edit by hand. To regenerate: "
        "`make results` (all scenarios, then this file), or `python -m jobs.results --reuse` to rebuild the tables "
        "from the finished runs under the output root.",
        "",
        f"Tables written at commit {commit()} on {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs "
        f"({platform.machine()}), no GPU, data `{data_source}`; all scenarios {minutes:.1f} min. "
        "Every number is a percentage (update gain a ratio) on the test split: the mean over seeds ± their "
        "sample standard deviation (with the seeds it covers where a seed has none), and pooled: each query's "
        "difference averaged over the seeds, with its 95 % paired bootstrap interval over the queries. A verdict is "
        "that interval, per seed: met above 0, not met at or below, within noise (`noise`) otherwise; a cell counts "
        "the seeds (`met 2, noise 1 / 3`). criterion: new/old minus old/old on top-1 and on mAP; "
        f"gain ≥ {GAIN_TARGET}: new/old minus old/old minus {GAIN_TARGET} x (independent new/new minus old/old), on "
        "both; a claim holds only when met in every seed. "
        "Routes: `direct` searches the old gallery with the new model's features; `T21` maps the new features into "
        "the old space first; `T12` maps the old gallery into the new space (`old/new` then searches the new gallery "
        "with the mapped old queries). Full table: "
        f"`{csv_path}`.",
        "",
    ]


def routes_table(scenarios: list[Scenario]) -> list[str]:
    """Every compatible route of every method (not the independent model's), one column per
    scenario: its update gain on top-1 / mAP pooled over the seeds' queries, marked where it
    reaches ``GAIN_TARGET`` on both, by interval, in every seed and query subset."""
    names = [s.path.stem for s in scenarios]
    rows: dict[str, dict[str, str]] = {}
    for scenario in scenarios:
        for row in scenario.folded.itertuples():
            method = method_named(row.method)
            if method.role is Role.INDEPENDENT or row.route not in method.compatible_routes:
                continue
            verdicts = [getattr(row, f"gain_target{s}") for s in SUBSETS if hasattr(row, f"gain_target{s}")]
            reached = all(v.startswith(MET) and "," not in v for v in verdicts if v != "-")
            rows.setdefault(f"{row.entry} ({row.route})", {})[scenario.path.stem] = (
                f"{row.pooled_gain_top1:.2f} / {row.pooled_gain_map:.2f}" + (" **✓**" if reached else ""))
    lines = ["## Routes compared", "",
             f"Update gain on top-1 / mAP of each method's compatible routes, pooled over the seeds' queries (the "
             f"tables below give the intervals); **✓**: at least {GAIN_TARGET} on both, by interval, in every seed "
             "(and on the seen and unseen classes where the old model knew fewer).", "",
             "| route | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    lines += [f"| {route} | " + " | ".join(cells.get(name, "-") for name in names) + " |" for route, cells in rows.items()]
    return lines + [""]


def write_results(scenarios: list[Scenario], out: Path, data_source: str) -> Path:
    """``out`` (Markdown) and the CSV beside it, from every scenario; the CSV's path."""
    out.parent.mkdir(parents=True, exist_ok=True)
    csv_path = out.with_suffix(".csv")
    write_text_atomic(csv_path, pd.concat([s.folded for s in scenarios]).to_csv(index=False))
    minutes = sum(s.run["seconds"] for s in scenarios) / 60
    sections = [line for s in scenarios for line in scenario_section(s)]
    lines = results_header(csv_path, data_source, minutes) + routes_table(scenarios) + sections
    write_text_atomic(out, "\n".join(lines))
    return csv_path
