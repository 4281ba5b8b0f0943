import runpy
import subprocess
import sys

import pytest

JOBS = ["ingest", "stats", "train", "cmc", "encode", "score", "pipeline", "results", "register", "report", "lineage"]


# Other tests import some jobs first; runpy warns that it runs such a module again as __main__.
@pytest.mark.filterwarnings("ignore:'jobs\\..*' found in sys.modules:RuntimeWarning")
def test_every_job_has_help(capsys, monkeypatch):
    """``python -m jobs.<job> --help`` for every job, run the way ``-m`` runs it (runpy, as
    ``__main__``) in this process, which has torch and Ray imported already; the test below
    starts a real ``python -m`` process."""
    for job in JOBS:
        monkeypatch.setattr(sys, "argv", [f"jobs.{job}", "--help"])
        with pytest.raises(SystemExit) as exit_:
            runpy.run_module(f"jobs.{job}", run_name="__main__")
        assert exit_.value.code == 0, job
        assert f"python -m jobs.{job}" in capsys.readouterr().out, job


def test_bad_config_exits_2_naming_the_key(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("old: {name: old, epochz: 1}\nnew: [{name: lce}]\n")
    result = subprocess.run([sys.executable, "-m", "jobs.pipeline", "--config", str(config)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2
    assert "unknown key 'old.epochz'" in result.stderr
