import subprocess
import sys

import pytest

JOBS = ["ingest", "stats", "train", "cmc", "encode", "score", "pipeline", "results", "register", "report", "lineage"]


@pytest.mark.parametrize("job", JOBS)
def test_help(job):
    result = subprocess.run([sys.executable, "-m", f"jobs.{job}", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"python -m jobs.{job}" in result.stdout


def test_bad_config_exits_2_naming_the_key(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("old: {name: old, epochz: 1}\nnew: [{name: lce}]\n")
    result = subprocess.run([sys.executable, "-m", "jobs.pipeline", "--config", str(config)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2
    assert "unknown key 'old.epochz'" in result.stderr
