import runpy
import subprocess
import sys

import pytest

JOBS = ["ingest", "import_model", "stats", "train", "cmc", "encode", "score", "pipeline", "results", "register", "report",
        "lineage"]


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


HEAVY = {"torch", "ray", "mlflow", "faiss", "pandas", "pyarrow", "timm", "onnxruntime"}


@pytest.mark.parametrize("job", JOBS)
def test_help_answers_without_importing_heavy_libraries(job):
    """``--help`` of a fresh ``python -m jobs.<job>`` process imports none of the libraries that
    make a job's start slow (what it imports, not how long it takes: this machine's speed varies)."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", f"jobs.{job}", "--help"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in result.stderr.splitlines()
                if line.startswith("import time:")}
    assert not imported & HEAVY, sorted(imported & HEAVY)


def test_bad_config_exits_2_naming_the_key(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("old: {name: old, epochz: 1}\nnew: [{name: lce}]\n")
    result = subprocess.run([sys.executable, "-m", "jobs.pipeline", "--config", str(config)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2
    assert "unknown key 'old.epochz'" in result.stderr


def test_command_line_options_become_configs_checked_by_their_schemas():
    import argparse

    from jobs import cli
    from pipeline.config import ConfigError

    parser = argparse.ArgumentParser()
    cli.add_search_args(parser)
    cli.add_encode_args(parser)
    args = parser.parse_args(["--index", "ivf", "--nprobe", "4", "--no-full-ranking", "--num-actors", "2"])
    score, encode = cli.score_options(args, topk=[1, 10]), cli.encode_options(args)
    assert (score.index.kind, score.index.nprobe, score.full_ranking, score.topk) == ("ivf", 4, False, [1, 10])
    assert encode.num_actors == 2 and encode.cpus_per_actor == 0.5
    with pytest.raises(ConfigError, match=r"command line: key 'index.nlist': Input should be greater than or equal to 0"):
        cli.score_options(parser.parse_args(["--nlist", "-1"]))
