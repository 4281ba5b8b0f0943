"""What a cluster deployment reads: cluster.yaml, the requirement sets, the cluster job configs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from pipeline.flows.configs import load_train_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster_file() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_cluster_file_passes_the_launchers_own_validation(cluster_file):
    # What `ray up` does before it starts anything: fill in the provider's defaults, check the schema.
    validate_config(prepare_config(cluster_file))


def test_cluster_file_has_a_cpu_head_and_autoscaling_gpu_workers(cluster_file):
    assert cluster_file["docker"]["image"] == "rayproject/ray:2.60.0-py311-gpu"
    types = cluster_file["available_node_types"]
    head = types[cluster_file["head_node_type"]]
    assert head["node_config"]["InstanceType"].startswith(("m", "c", "r"))  # a CPU instance family
    workers = [t for name, t in types.items() if name != cluster_file["head_node_type"]]
    assert any(t["node_config"]["InstanceType"].startswith(("g", "p")) and t["min_workers"] == 0
               and t["max_workers"] > 0 for t in workers)


def test_cluster_file_installs_the_gpu_requirements_and_mounts_shared_storage(cluster_file):
    setup = "\n".join(cluster_file["setup_commands"])
    assert "requirements-gpu.txt" in setup and "uninstall -y faiss-cpu" in setup
    assert "/mnt/shared" in "\n".join(cluster_file["initialization_commands"])
    assert any("/mnt/shared:/mnt/shared" in option for option in cluster_file["docker"]["run_options"])


def test_dashboard_and_mlflow_are_not_open_to_the_internet(cluster_file):
    start = "\n".join(cluster_file["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in start
    mlflow = next(command for command in cluster_file["head_start_ray_commands"] if "mlflow server" in command)
    assert "0.0.0.0" not in mlflow and "--host" in mlflow
    assert re.search(r"--backend-store-uri \S*(sqlite|postgresql)", mlflow)  # a database, not a file store


def _requirement_names(path: Path) -> list[str]:
    names = []
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line.startswith("-r "):
            names += _requirement_names(path.parent / line[3:].strip())
        elif line:
            names.append(re.split(r"[<>=\[ ]", line)[0].lower())
    return names


@pytest.mark.parametrize(("file", "faiss"), [("requirements.txt", "faiss-cpu"), ("requirements-gpu.txt", "faiss-gpu-cu12")])
def test_each_requirement_set_holds_exactly_one_faiss_build(file, faiss):
    assert [name for name in _requirement_names(ROOT / file) if name.startswith("faiss")] == [faiss]


@pytest.mark.parametrize("config", sorted((ROOT / "configs" / "cluster").glob("*.yaml")), ids=lambda p: p.name)
def test_cluster_training_configs_retry_failed_workers(config):
    cfg = load_train_config(config)
    assert cfg.max_failures > 0 and cfg.num_workers > 1 and cfg.batch_size % cfg.num_workers == 0
