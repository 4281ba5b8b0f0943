"""Production training on a real multi-node Ray cluster started with `ray start` on this machine.

Ray nodes of one CPU each (a head and a second node; a third joins for the tests that lose a
node) run the jobs as users run them: as CLI processes joining the cluster, or through `ray job
submit`. These tests own their cluster, so
they run in a pytest session of their own (`pytest -m cluster`, which `make test` runs after the
other tests): two Ray instances on one machine at once are not supported.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from pipeline.config import ModelConfig
from pipeline.data.decode import load_split
from pipeline.data.embeddings import open_embeddings
from pipeline.data.importers import ingest
from pipeline.model.artifacts import load_model, write_initial_model
from pipeline.model.card import read_card
from pipeline.score.entries import MatrixEntry, MatrixRoles
from pipeline.score.matrix import score_all_pairs
from pipeline.score.report import write_tables
from pipeline.score.retrieval import per_query_metrics, summarize
from tests.conftest import FAST_POLLING
from tests.jobs.helpers import folder_state, synthetic_sets, untrained_model
from tests.score.test_on_ray import same_report

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray"))
GCS_PORT, DASHBOARD_PORT = 6391, 8291
ADDRESS, DASHBOARD = f"127.0.0.1:{GCS_PORT}", f"http://127.0.0.1:{DASHBOARD_PORT}"
NODE_OPTIONS = ["--num-cpus", "1", "--node-ip-address", "127.0.0.1", "--object-store-memory", str(300 * 2**20),
                "--disable-usage-stats"]
NODE_DIRS: list[str] = []  # the temporary folders of the nodes joined to the head, removed after `ray stop`


@pytest.fixture(scope="module")
def cluster():
    """A head and a second node started with `ray start` on loopback, with token authentication as
    Ray 2.60 turns it on; the token (fresh for this cluster) reaches every process through the
    environment, so no file under the user's home is read or written."""
    env = {key: value for key, value in os.environ.items() if key != "RAY_AUTH_TOKEN_PATH"}
    env.update(FAST_POLLING, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32), PYTHONPATH=str(ROOT),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               # A lost node is marked dead after 3 missed health checks a second apart (Ray's default: 5,
               # 3 s apart), so that the node-loss tests wait 3 s for it rather than 15.
               RAY_health_check_period_ms="1000", RAY_health_check_failure_threshold="3")
    subprocess.run([RAY, "start", "--head", "--port", str(GCS_PORT), "--dashboard-host", "127.0.0.1",
                    "--dashboard-port", str(DASHBOARD_PORT), *NODE_OPTIONS], env=env, check=True, capture_output=True)
    try:
        _join_node(env)
        yield env
    finally:
        subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True)
        while NODE_DIRS:
            shutil.rmtree(NODE_DIRS.pop(), ignore_errors=True)


def _join_node(env: dict[str, str]) -> None:
    """A node joined to the head, with a temporary folder of its own, as another host would have:
    two nodes sharing one would delete each other's unpacked job working directories."""
    NODE_DIRS.append(tempfile.mkdtemp(prefix="ray-node-"))  # short: Ray's socket paths live under it
    subprocess.run([RAY, "start", "--address", ADDRESS, "--temp-dir", NODE_DIRS[-1], *NODE_OPTIONS], env=env,
                   check=True, capture_output=True)


@pytest.fixture
def three_nodes(cluster) -> None:
    """Two nodes besides the head when the test starts (one joined for a node an earlier test
    lost), so that a test may lose one and keep a node besides the head."""
    while len(_raylets(head=False)) < 2:
        _join_node(cluster)


def _processes() -> dict[int, tuple[int, str]]:
    """This machine's processes: pid -> (parent pid, command line)."""
    table = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            command = stat.with_name("cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):  # the process ended meanwhile
            continue
        table[int(stat.parent.name)] = (parent, command)
    return table


def _raylets(head: bool) -> list[int]:
    """The raylets running on this machine: the head's (``head``), else the other nodes'."""
    return [pid for pid, (_, command) in _processes().items()
            if "/raylet " in command.split("--", 1)[0] and ("--head" in command.split()) == head]


def _lose_node_hosting(title: str) -> int:
    """SIGKILL at once every process of a node other than the head that runs a Ray worker titled
    ``title`` (``ray::...<title>...``): its raylet, the raylet's workers and the node's agents, as
    a reclaimed spot instance loses them. Returns how many processes were killed."""
    processes = _processes()
    hosts = {parent for parent, command in processes.values() if command.startswith("ray::") and title in command}
    raylet = next((pid for pid in _raylets(head=False) if pid in hosts), None)
    assert raylet is not None, f"no node but the head runs a ray::...{title} worker"
    temp_dir = re.search(r"--temp_dir=(\S+)", processes[raylet][1])[1]
    doomed, added = {raylet}, True
    while added:  # the raylet's descendants: its workers (titled, so found by their parent)
        grown = doomed | {pid for pid, (parent, _) in processes.items() if parent in doomed}
        added, doomed = grown != doomed, grown
    doomed |= {pid for pid, (_, command) in processes.items() if re.search(rf"{re.escape(temp_dir)}(/|\s|$)", command)}
    for pid in sorted(doomed, key=lambda pid: pid != raylet):  # the raylet first: the node goes, not a worker
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return len(doomed)


@pytest.fixture(scope="module")
def dataset(fashion_subset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cluster-data") / "fashion"
    ingest(fashion_subset, out)
    return out


def _train_config(folder: Path, name: str, **overrides) -> Path:
    config = {"name": name, "model": {"embedding_dim": 32}, "epochs": 3, "batch_size": 64, "min_steps": 300,
              "num_workers": 2, "cpus_per_worker": 1, "placement_strategy": "STRICT_SPREAD", "max_failures": 2,
              **overrides}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _train_job(config: Path, dataset: Path, work: Path) -> list[str]:
    """``jobs.train`` and its arguments, as ``python -m`` or ``ray job submit`` takes them."""
    return ["jobs.train", "--config", str(config), "--dataset", str(dataset),
            "--out", str(work / "models" / config.stem), "--storage-path", str(work / "ray"),
            "--tracking-uri", f"sqlite:///{work / 'mlflow.db'}", "--experiment", "cluster"]


def _train_command(config: Path, dataset: Path, work: Path) -> list[str]:
    """The training job as a process that joins the cluster."""
    return [sys.executable, "-m", *_train_job(config, dataset, work), "--ray-address", ADDRESS]


def _committed_checkpoints(run_dir: Path) -> list:
    """Checkpoints the Ray Train controller has registered (a worker's checkpoint folder exists a
    moment earlier; one whose worker dies before the controller polls its report is not kept)."""
    snapshot = run_dir / "checkpoint_manager_snapshot.json"
    try:
        return json.loads(snapshot.read_text())["checkpoint_results"] if snapshot.is_file() else []
    except json.JSONDecodeError:  # being written
        return []


def _wait_until(done: Callable[[], bool], what: str, process: subprocess.Popen | None = None,
                timeout: float = 240) -> None:
    """Poll ``done`` until it holds; fail if ``process`` ended first or ``timeout`` seconds passed."""
    deadline = time.monotonic() + timeout
    while not done():
        assert process is None or process.poll() is None, f"the job ended before {what}:\n{process.communicate()[0]}"
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.05)


def _wait_for_checkpoint(work: Path, name: str, process: subprocess.Popen | None = None) -> None:
    _wait_until(lambda: bool(_committed_checkpoints(work / "ray" / name)), "first registered checkpoint", process)


def _epoch_history(work: Path, name: str) -> tuple[list[mlflow.entities.Run], set[int]]:
    client = mlflow.tracking.MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("cluster")
    runs = [run for run in client.search_runs([experiment.experiment_id]) if run.info.run_name == name]
    steps = {metric.step for run in runs for metric in client.get_metric_history(run.info.run_id, "train_loss")}
    return runs, steps


def _train_worker_pids() -> list[int]:
    """Processes of Ray Train workers on this machine (Ray titles them ``ray::RayTrainWorker...``)."""
    return sorted(pid for pid, (_, command) in _processes().items() if "RayTrainWorker" in command)


@pytest.mark.slow  # a lost node (test_a_node_lost_mid_epoch_...) kills a worker process too
def test_killed_worker_process_resumes_from_the_last_checkpoint(cluster, dataset, tmp_path):
    config = _train_config(tmp_path, "killed-worker")
    process = subprocess.Popen(_train_command(config, dataset, tmp_path), cwd=ROOT, env=cluster,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_for_checkpoint(tmp_path, "killed-worker", process)
    workers = _train_worker_pids()
    assert len(workers) == 2, workers
    os.kill(workers[-1], signal.SIGKILL)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output

    metrics = read_card(tmp_path / "models" / "killed-worker").metrics
    assert metrics["epoch"] == 2
    assert metrics["resumed_from_epoch"] >= 1  # continued from a checkpoint, not from epoch 0
    runs, steps = _epoch_history(tmp_path, "killed-worker")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert steps == {0, 1, 2}


@pytest.mark.slow  # `ray job stop` (test_ray_job_stop_...) sends the driver SIGTERM, and it then ends as if killed
@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM], ids=["killed", "preempted"])
def test_killed_driver_rerun_continues_the_run(cluster, dataset, tmp_path, stop):
    """A training driver that dies (SIGKILL) or is preempted (SIGTERM, as a reclaimed node sends)
    mid-run: the same command continues the Ray Train run and its MLflow run. Either way the
    driver ends at once, leaving its run lock's record, which the rerun takes over."""
    config = _train_config(tmp_path, "killed-driver")
    command = _train_command(config, dataset, tmp_path)
    process = subprocess.Popen(command, cwd=ROOT, env=cluster, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    _wait_for_checkpoint(tmp_path, "killed-driver", process)
    process.send_signal(stop)
    output, _ = process.communicate(timeout=60)
    if stop == signal.SIGTERM:
        assert process.returncode == 143 and "stopped by SIGTERM during a fit" in output, output[-3000:]

    rerun = subprocess.run(command, cwd=ROOT, env=cluster, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"pid {process.pid}, started" in rerun.stderr and "which no longer runs" in rerun.stderr
    metrics = read_card(tmp_path / "models" / "killed-driver").metrics
    assert metrics["epoch"] == 2 and metrics["resumed_from_epoch"] >= 1
    runs, steps = _epoch_history(tmp_path, "killed-driver")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # the rerun continued the same MLflow run
    assert steps == {0, 1, 2}


@pytest.mark.slow
def test_killed_cmc_driver_rerun_continues_the_run(cluster, dataset, tmp_path):
    """CMC runs through the same driver as training: killed after its first registered checkpoint
    and run again with the same command, it resumes the Ray Train run and its MLflow run."""
    classes = json.loads((dataset / "classes.json").read_text())
    torch.manual_seed(0)
    for name, known in (("old", classes[:5]), ("new", classes)):
        write_initial_model(tmp_path / "models" / name, name, ModelConfig(embedding_dim=16), known)
    # ~1,200 feature rows: 18 batches a pass, many passes an epoch, so that the kill lands after the first.
    config = tmp_path / "cmc.yaml"
    config.write_text(yaml.safe_dump({"name": "cmc", "method": "lce_cmc", "new_model": "new", "epochs": 3,
                                      "batch_size": 64, "min_steps": 3_000, "cpus_per_worker": 1,
                                      "transform": {"hidden": 32}}))
    command = [sys.executable, "-m", "jobs.cmc", "--config", str(config), "--old-model", str(tmp_path / "models/old"),
               "--new-model", str(tmp_path / "models/new"), "--dataset", str(dataset), "--out", str(tmp_path / "cmc"),
               "--work-dir", str(tmp_path / "work"), "--threads-per-actor", "1",
               "--storage-path", str(tmp_path / "ray"),
               "--ray-address", ADDRESS, "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--experiment",
               "cluster"]
    process = subprocess.Popen(command, cwd=ROOT, env=cluster, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    _wait_for_checkpoint(tmp_path, "cmc", process)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert not (tmp_path / "cmc" / "card.json").exists()  # killed before the end

    rerun = subprocess.run(command, cwd=ROOT, env=cluster, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    card = read_card(tmp_path / "cmc")
    assert card.kind == "cmc" and card.metrics["epoch"] == 2 and card.metrics["resumed_from_epoch"] >= 1
    runs, steps = _epoch_history(tmp_path, "cmc")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # the rerun continued the same MLflow run
    assert steps == {0, 1, 2}


def _test_split_metrics(model_dir: Path, dataset: Path) -> tuple[dict[str, float], int]:
    model, _ = load_model(model_dir)
    ids, images, labels = load_split(dataset, "test")
    with torch.inference_mode():
        vectors = model.eval().embedder(torch.from_numpy(images)).numpy()
    ids = np.asarray(ids)
    return summarize(per_query_metrics(vectors, labels, vectors, labels, ids, ids, topk=(1,))), len(ids)


@pytest.mark.slow
def test_two_nodes_match_one_worker_with_the_same_global_batch(cluster, dataset, tmp_path):
    results = {}
    for name, workers in (("two-nodes", 2), ("one-worker", 1)):
        config = _train_config(tmp_path, name, num_workers=workers, max_failures=0, epochs=3)
        run = subprocess.run(_train_command(config, dataset, tmp_path), cwd=ROOT, env=cluster, capture_output=True,
                             text=True, timeout=300)
        assert run.returncode == 0, run.stdout + run.stderr
        results[name], queries = _test_split_metrics(tmp_path / "models" / name, dataset)
    # Within noise: 2.5 standard errors of the difference of two binomial proportions over these queries.
    p = results["one-worker"]["top1"]
    tolerance = 2.5 * np.sqrt(2 * p * (1 - p) / queries)
    assert abs(results["two-nodes"]["top1"] - p) <= tolerance, (results, tolerance)
    assert abs(results["two-nodes"]["map"] - results["one-worker"]["map"]) <= tolerance, (results, tolerance)


def _job_options(submission_id: str) -> list[str]:
    """`ray job submit`'s options as the README shows them."""
    return ["--address", DASHBOARD, "--submission-id", submission_id, "--runtime-env", "configs/runtime_env.yaml"]


def _submit(cluster: dict, submission_id: str, *job: str) -> str:
    """`ray job submit` as the README shows it; it waits for the job and exits 0 once it
    SUCCEEDED. Returns what it printed (the job's output among it)."""
    submitted = subprocess.run(
        [RAY, "job", "submit", *_job_options(submission_id), "--", "python", "-m", *job],
        cwd=ROOT, env=cluster, capture_output=True, text=True, timeout=300)
    assert submitted.returncode == 0, submitted.stdout[-4000:] + submitted.stderr[-4000:]
    assert f"Job '{submission_id}' succeeded" in submitted.stdout + submitted.stderr
    return submitted.stdout + submitted.stderr


def test_ray_job_submit_runs_train_encode_and_score(cluster, dataset, tmp_path):
    config = _train_config(tmp_path, "submitted", num_workers=1, max_failures=0, epochs=1, min_steps=0)
    tracking = ["--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    model, embeddings, report = tmp_path / "models" / "submitted", tmp_path / "embeddings", tmp_path / "report"
    _submit(cluster, f"train-{tmp_path.name}", "jobs.train", "--config", str(config), "--dataset", str(dataset),
            "--out", str(model), "--storage-path", str(tmp_path / "ray"), *tracking)
    _submit(cluster, f"encode-{tmp_path.name}", "jobs.encode", "--model", str(model), "--dataset", str(dataset),
            "--split", "test", "--out", str(embeddings))
    _submit(cluster, f"score-{tmp_path.name}", "jobs.score", "--embeddings", str(embeddings), "--old-model", str(model),
            "--out", str(report), *tracking)
    assert (model / "card.json").is_file()
    assert (report / "report.csv").is_file()


def test_scoring_spreads_its_pairs_over_both_nodes_into_the_report_of_one_process(cluster, tmp_path):
    classes = ["a", "b", "c", "d"]
    sets = synthetic_sets(tmp_path / "sets", 300, classes)
    names = ("old", "new", "rotated")
    output = _submit(cluster, f"score-{tmp_path.name}", "jobs.score", "--embeddings",
                     *(str(sets["test", name]) for name in names), "--old", "old", "--old-classes", "a", "b",
                     "--in-ray", "--out", str(tmp_path / "report"), "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert len(set(re.findall(r"on node ([0-9a-f]{56})", output))) == 2, output[-4000:]  # both nodes scored pairs
    entries = {name: MatrixEntry.plain(name, open_embeddings(sets["test", name]), "old") for name in names}
    alone = score_all_pairs(entries, MatrixRoles(old="old", old_classes=["a", "b"]))  # in this process, no Ray
    write_tables(alone, tmp_path / "alone")
    same_report(pd.read_parquet(tmp_path / "report" / "report.parquet"),
                pd.read_parquet(tmp_path / "alone" / "report.parquet"))


def test_ray_job_stop_leaves_a_run_the_next_submission_continues(cluster, dataset, tmp_path):
    """``ray job stop`` sends the job's processes SIGTERM (then SIGKILL after 3 s): the driver ends
    at once, and the same job submitted again continues the Ray Train run and its MLflow run,
    taking over the run lock's record that the driver left."""
    job, submission = _train_job(_train_config(tmp_path, "stopped"), dataset, tmp_path), f"stopped-{tmp_path.name}"
    submitted = subprocess.run([RAY, "job", "submit", "--no-wait", *_job_options(submission), "--", "python", "-m",
                                *job], cwd=ROOT, env=cluster, capture_output=True, text=True, timeout=120)
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    _wait_for_checkpoint(tmp_path, "stopped")
    stop = subprocess.run([RAY, "job", "stop", "--address", DASHBOARD, submission], cwd=ROOT, env=cluster,
                          capture_output=True, text=True, timeout=120)
    assert stop.returncode == 0 and "stopped" in stop.stdout + stop.stderr, stop.stdout + stop.stderr
    logs = subprocess.run([RAY, "job", "logs", "--address", DASHBOARD, submission], cwd=ROOT, env=cluster,
                          capture_output=True, text=True, timeout=60).stdout
    assert "stopped by SIGTERM during a fit" in logs, logs[-3000:]
    assert not (tmp_path / "models" / "stopped" / "card.json").exists()

    output = _submit(cluster, f"{submission}-again", *job)
    assert "which no longer runs" in output  # the run lock's record, taken over with a log line
    metrics = read_card(tmp_path / "models" / "stopped").metrics
    assert metrics["epoch"] == 2 and metrics["resumed_from_epoch"] >= 1
    runs, steps = _epoch_history(tmp_path, "stopped")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert steps == {0, 1, 2}


# The last tests of this module lose a node each (three_nodes joins one first where needed).


def test_a_node_lost_mid_epoch_resumes_on_the_remaining_nodes(cluster, three_nodes, dataset, tmp_path):
    """A node hosting a training worker is lost (every process of it killed at once) during the
    second epoch: Ray Train (``max_failures``) starts a new worker group on the two nodes left,
    which resumes from the last registered checkpoint; one MLflow run holds every epoch."""
    config = _train_config(tmp_path, "lost-node")
    process = subprocess.Popen(_train_command(config, dataset, tmp_path), cwd=ROOT, env=cluster,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_for_checkpoint(tmp_path, "lost-node", process)
    assert _lose_node_hosting("RayTrainWorker") > 1
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output[-5000:]

    metrics = read_card(tmp_path / "models" / "lost-node").metrics
    assert metrics["epoch"] == 2 and metrics["resumed_from_epoch"] >= 1
    runs, steps = _epoch_history(tmp_path, "lost-node")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert steps == {0, 1, 2}


def test_a_node_lost_mid_encode_finishes_with_the_output_of_an_uninterrupted_run(cluster, three_nodes, gallery_dataset,
                                                                                tmp_path):
    """Two encoding actors of one CPU each (each decoding its files) on two of the three nodes;
    the non-head node hosting one is lost once the first parts are written. Ray Data restarts the
    actor on the node left free and retries its batches: the job ends with the same files, bit
    for bit, as an encoding that lost no node. The model reads 112 px, so that encoding lasts
    seconds rather than the actors' start-up alone."""
    classes = json.loads((gallery_dataset / "classes.json").read_text())
    model = untrained_model(tmp_path / "model", classes, dim=64, image_size=112)

    def encode(out: Path) -> list[str]:
        return [sys.executable, "-m", "jobs.encode", "--model", str(model), "--dataset", str(gallery_dataset),
                "--out", str(out), "--num-actors", "2", "--cpus-per-actor", "1", "--threads-per-actor", "1",
                "--batch-size", "100", "--ray-address", ADDRESS]
    whole = subprocess.run(encode(tmp_path / "whole"), cwd=ROOT, env=cluster, capture_output=True, text=True,
                           timeout=300)
    assert whole.returncode == 0, whole.stderr[-5000:]

    interrupted = tmp_path / "interrupted"
    process = subprocess.Popen(encode(interrupted), cwd=ROOT, env=cluster, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    _wait_until((interrupted / "part-00001.parquet").exists, "second part", process)
    assert _lose_node_hosting("MapWorker") > 1
    written = len(list(interrupted.glob("part-*.parquet")))
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output[-5000:]
    assert written < 10, "the node was lost after the last part: not mid-encode"
    assert "MapWorker(MapBatches(FileEncoder)).submit failed" in output and "will be retried" in output, output
    assert folder_state(interrupted) == folder_state(tmp_path / "whole")
