import subprocess
import sys

JOBS = ["ingest", "stats", "train", "cmc", "encode", "score", "pipeline", "results", "register", "report", "lineage"]


def test_every_job_has_help():
    """``python -m jobs.<job> --help`` for every job, the processes side by side (each imports torch and Ray)."""
    processes = {job: subprocess.Popen([sys.executable, "-m", f"jobs.{job}", "--help"], stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True) for job in JOBS}
    for job, process in processes.items():
        stdout, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, f"jobs.{job}: {stderr}"
        assert f"python -m jobs.{job}" in stdout, job


def test_bad_config_exits_2_naming_the_key(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("old: {name: old, epochz: 1}\nnew: [{name: lce}]\n")
    result = subprocess.run([sys.executable, "-m", "jobs.pipeline", "--config", str(config)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2
    assert "unknown key 'old.epochz'" in result.stderr
