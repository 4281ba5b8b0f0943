"""Which scenarios make the results tables: run now, or read from a finished run."""

import pytest

from pipeline.flows.scenarios import plan
from pipeline.flows.workspace import TIMING_FILE


def test_scenarios_run_one_at_a_time_and_tables_take_the_others_from_finished_runs(tmp_path):
    paths = [tmp_path / f"{name}.yaml" for name in ("classes", "data", "dim")]
    (tmp_path / "root" / "data").mkdir(parents=True)
    (tmp_path / "root" / "data" / TIMING_FILE).write_text("{}")
    root = tmp_path / "root"
    assert plan(paths, root, None, reuse=False) == [(p, False) for p in paths]
    assert plan(paths, root, ["classes"], reuse=False) == [(paths[0], False), (paths[1], True)]  # dim: not run yet
    with pytest.raises(ValueError, match=r"--run \['loss'\]: no such scenario among \['classes', 'data', 'dim'\]"):
        plan(paths, root, ["loss"], reuse=False)
    with pytest.raises(ValueError, match="no scenario to run and none finished"):
        plan(paths[2:], root, [], reuse=False)

