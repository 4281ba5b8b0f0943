"""Bad input, fed through the real jobs (their CLI entry points, on the session's Ray cluster):
each case ends in one clear message naming the row, key or file, or in a recorded skip, and
loses nothing."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from PIL import Image

from pipeline.compat.statistics import compute_old_space_stats
from pipeline.config import ConfigError
from pipeline.data.dataset import DATASET_SCHEMA
from pipeline.data.embeddings import embeddings_table, read_embeddings, write_embeddings
from pipeline.data.importers import ingest
from pipeline.flows.configs import load_lineage_config, load_pipeline_config
from tests.conftest import write_idx
from tests.jobs.helpers import folder_state, run_job, untrained_model
from tests.mlflow_server import MlflowServer
from tuning.space import load_sweep_config


def png(value: int = 128, size: int = 28) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (size, size), value).save(buffer, format="PNG")
    return buffer.getvalue()


def mutated_images(rng: np.random.Generator, count: int) -> list[bytes]:
    """Random bytes, truncated and bit-flipped PNGs, and a few good ones."""
    images = []
    for index in range(count):
        good = png(int(rng.integers(0, 255)))
        kind = index % 4
        if kind == 0:
            images.append(rng.bytes(int(rng.integers(0, 300))))
        elif kind == 1:
            images.append(good[: int(rng.integers(0, len(good)))])
        elif kind == 2:
            flipped = bytearray(good)
            for position in rng.integers(0, len(flipped), 3):
                flipped[position] ^= 1 << int(rng.integers(0, 8))
            images.append(bytes(flipped))
        else:
            images.append(good)
    return images


def image_folder(root: Path, per_class: int = 4) -> Path:
    for name in ("coat", "shirt"):
        (root / name).mkdir(parents=True)
        for index in range(per_class):
            (root / name / f"{index}.png").write_bytes(png(40 * index))
    return root


# ---------------------------------------------------------------- ingest


def test_ingest_corrupt_image_stops_naming_the_row_or_is_skipped_and_listed(tmp_path, caplog):
    source = image_folder(tmp_path / "src")
    (source / "coat" / "broken.png").write_bytes(b"\x89PNG not really")
    code, log = run_job("ingest", "--source", source, "--out", tmp_path / "ds", caplog=caplog)
    assert code == 2 and "row 'coat/broken.png': image bytes cannot be decoded" in log
    assert not (tmp_path / "ds" / "dataset.json").exists()  # no half-ingested dataset looks finished

    code, _ = run_job("ingest", "--source", source, "--out", tmp_path / "ds", "--on-bad-rows", "skip", caplog=caplog)
    assert code == 0
    listed = json.loads((tmp_path / "ds" / "bad_rows.json").read_text())
    skipped = listed["train"]["rows"] + listed["test"]["rows"]
    assert [row["id"] for row in skipped] == ["coat/broken.png"] and "cannot be decoded" in skipped[0]["problem"]
    ids = pq.read_table(tmp_path / "ds" / "train").column("id").to_pylist() + \
        pq.read_table(tmp_path / "ds" / "test").column("id").to_pylist()
    assert len(ids) == 8 and "coat/broken.png" not in ids
    meta = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    assert sum(meta["skipped"].values()) == 1 and sum(meta["rows"].values()) == 8


def test_ingest_image_without_a_class_is_a_missing_label(tmp_path, caplog):
    source = image_folder(tmp_path / "src")
    (source / "stray.png").write_bytes(png())
    code, log = run_job("ingest", "--source", source, "--out", tmp_path / "ds", caplog=caplog)
    assert code == 2 and "row 'stray.png': missing label" in log
    code, _ = run_job("ingest", "--source", source, "--out", tmp_path / "ds", "--on-bad-rows", "skip", caplog=caplog)
    assert code == 0
    assert json.loads((tmp_path / "ds" / "bad_rows.json").read_text())["train"]["by_problem"] == {"missing label": 1}


def test_idx_labels_outside_classes_or_missing(tmp_path, caplog):
    """classes.txt names 9 classes, so label 9 is outside the label map; the test labels file
    is 3 labels short, so its last 3 images have none."""
    source = tmp_path / "idx"
    source.mkdir()
    labels = np.arange(40) % 10
    write_idx(source / "train-images-idx3-ubyte.gz", np.zeros((40, 28, 28)))
    write_idx(source / "train-labels-idx1-ubyte.gz", labels)
    write_idx(source / "t10k-images-idx3-ubyte.gz", np.zeros((20, 28, 28)))
    write_idx(source / "t10k-labels-idx1-ubyte.gz", labels[:17])
    (source / "classes.txt").write_text("\n".join(f"c{i}" for i in range(9)))
    code, log = run_job("ingest", "--source", source, "--out", tmp_path / "ds", caplog=caplog)
    assert code == 2 and "row 'train-000009': label 9 outside classes.json (9 classes)" in log
    code, _ = run_job("ingest", "--source", source, "--out", tmp_path / "ds", "--on-bad-rows", "skip", caplog=caplog)
    assert code == 0
    listed = json.loads((tmp_path / "ds" / "bad_rows.json").read_text())
    assert listed["train"]["by_problem"] == {"label 9 outside classes.json (9 classes)": 4}
    assert listed["test"]["by_problem"] == {"label 9 outside classes.json (9 classes)": 1, "missing label": 3}
    assert [r["id"] for r in listed["test"]["rows"] if r["problem"] == "missing label"] == \
        ["test-000017", "test-000018", "test-000019"]
    assert json.loads((tmp_path / "ds" / "dataset.json").read_text())["rows"] == {"train": 36, "test": 16}


def test_ingest_empty_split_is_an_error(tmp_path, caplog):
    source = tmp_path / "src"
    image_folder(source / "train")
    for name in ("coat", "shirt"):
        (source / "test" / name).mkdir(parents=True)
    code, log = run_job("ingest", "--source", source, "--out", tmp_path / "ds", caplog=caplog)
    assert code == 2 and "the test split is empty" in log
    (source / "test" / "coat" / "0.png").write_bytes(b"nonsense")  # a split whose only row is bad: empty too
    code, log = run_job("ingest", "--source", source, "--out", tmp_path / "ds", "--on-bad-rows", "skip", caplog=caplog)
    assert code == 2 and "the test split is empty (all 1 rows are bad" in log


# ---------------------------------------------------------------- encode


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory, fashion_subset) -> Path:
    """The real Fashion-MNIST subset (1,200 / 400 rows), 100 rows per file."""
    out = tmp_path_factory.mktemp("bad-input") / "dataset"
    ingest(fashion_subset, out, rows_per_file=100)
    return out


def dataset_with_test_rows(small_dataset: Path, folder: Path, rows: list[tuple[str, bytes | None, int | None]]) -> Path:
    """A copy of ``small_dataset`` with one more test file holding ``rows``."""
    shutil.copytree(small_dataset, folder)
    table = pa.table({"id": [r[0] for r in rows], "image": [r[1] for r in rows], "label": [r[2] for r in rows]},
                     schema=DATASET_SCHEMA)
    pq.write_table(table, folder / "test" / "part-00099.parquet")
    return folder


@pytest.mark.ray
def test_encode_bad_rows_stop_naming_file_and_row_or_are_skipped_and_listed_fuzzed_too(tmp_path, small_dataset, ray_cluster, caplog):
    classes = json.loads((small_dataset / "classes.json").read_text())
    model = untrained_model(tmp_path / "model", classes)
    named = [("good-1", png(), 1), ("bad-bytes", b"\x00garbage", 2), ("no-label", png(), None), ("label-99", png(), 99),
             ("no-image", None, 3), ("good-2", png(7), 4)]
    rng = np.random.default_rng(11)  # and fuzz: random bytes, broken PNGs, random labels
    fuzz_labels = [None if i % 7 == 0 else int(rng.integers(-3, 14)) for i in range(60)]
    fuzz = [(f"fuzz-{i:02d}", data, label) for i, (data, label) in enumerate(zip(mutated_images(rng, 60), fuzz_labels))]
    dataset = dataset_with_test_rows(small_dataset, tmp_path / "ds", named + fuzz)
    code, log = run_job("encode", "--model", model, "--dataset", dataset, "--out", tmp_path / "strict",
                        "--threads-per-actor", 1, caplog=caplog)
    assert code == 2 and "part-00099.parquet: row 'bad-bytes': image bytes cannot be decoded" in log
    assert not (tmp_path / "strict" / "_COMPLETE.json").exists()

    code, _ = run_job("encode", "--model", model, "--dataset", dataset, "--out", tmp_path / "lenient",
                      "--on-bad-rows", "skip", "--threads-per-actor", 1, caplog=caplog)
    assert code == 0
    marker = json.loads((tmp_path / "lenient" / "_COMPLETE.json").read_text())
    assert marker["rows"] + marker["bad_rows"]["skipped"] == 466
    problems = {row["id"]: row["problem"] for row in marker["bad_rows"]["rows"]}
    assert problems.pop("bad-bytes").startswith("image bytes cannot be decoded")
    assert {row_id: problems.pop(row_id) for row_id in ("no-label", "label-99", "no-image")} == {
        "no-label": "missing label", "label-99": "label 99 outside classes.json (10 classes)",
        "no-image": "no image bytes"}
    encoded = set(read_embeddings(tmp_path / "lenient").ids)
    assert len(encoded) == marker["rows"] and {"good-1", "good-2"} <= encoded
    fuzz_encoded = {row_id for row_id in encoded if row_id.startswith("fuzz-")}
    assert fuzz_encoded | set(problems) == {row_id for row_id, _, _ in fuzz} and not fuzz_encoded & set(problems)
    assert fuzz_encoded and all(fuzz_labels[int(row_id[5:])] in range(10) for row_id in fuzz_encoded)


@pytest.mark.ray
def test_encode_empty_split_is_an_error(tmp_path, small_dataset, ray_cluster, caplog):
    classes = json.loads((small_dataset / "classes.json").read_text())
    model = untrained_model(tmp_path / "model", classes)
    dataset = dataset_with_test_rows(small_dataset, tmp_path / "ds", [])
    for part in (dataset / "test").glob("part-000[0-8]*.parquet"):
        part.unlink()
    code, log = run_job("encode", "--model", model, "--dataset", dataset, "--out", tmp_path / "out", caplog=caplog)
    assert code == 2 and f"{dataset / 'test'}: no rows to encode (its Parquet files are empty)" in log


@pytest.mark.ray
def test_encode_actors_leaving_no_cpu_for_decoding_are_refused_self_decoding_ones_run(tmp_path, small_dataset, ray_cluster, caplog):
    model = untrained_model(tmp_path / "model", json.loads((small_dataset / "classes.json").read_text()))
    code, log = run_job("encode", "--model", model, "--dataset", small_dataset, "--out", tmp_path / "out",
                        "--num-actors", 3, "--cpus-per-actor", 0.5, caplog=caplog)
    assert code == 2 and ("encode: 3 actors x 0.5 CPUs (num_actors x cpus_per_actor) leave less than the 1 CPU a "
                          "decoding task needs: the cluster has 2 CPUs now") in log
    assert not (tmp_path / "out").exists()
    # actors of exactly one CPU decode their files themselves: every CPU may go to them
    code, _ = run_job("encode", "--model", model, "--dataset", small_dataset, "--out", tmp_path / "out",
                      "--num-actors", 2, "--cpus-per-actor", 1, "--threads-per-actor", 1, caplog=caplog)
    assert code == 0 and json.loads((tmp_path / "out" / "_COMPLETE.json").read_text())["rows"] == 400


# ---------------------------------------------------------------- interrupted jobs


def start_job(job: str, *args, ray_address: str) -> subprocess.Popen:
    """``python -m jobs.<job>`` as its own process on the session's Ray cluster."""
    return subprocess.Popen([sys.executable, "-m", f"jobs.{job}", *map(str, args)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "RAY_ADDRESS": ray_address})


def kill_when(process: subprocess.Popen, appeared: Path, timeout: float = 120,
              signal_number: int = signal.SIGKILL) -> None:
    """``signal_number`` (SIGKILL: a crash; SIGTERM: preemption) to ``process`` as soon as ``appeared`` exists."""
    deadline = time.monotonic() + timeout
    while not appeared.exists():
        assert process.poll() is None, f"the job ended (code {process.returncode}) before {appeared} appeared"
        assert time.monotonic() < deadline, f"{appeared} did not appear in {timeout} s"
        time.sleep(0.005)
    process.send_signal(signal_number)
    process.wait()


@pytest.mark.ray
@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM], ids=["killed", "preempted"])
def test_killed_encode_resumes_to_the_same_output(tmp_path, gallery_dataset, ray_cluster, caplog, stop):
    """SIGKILL (a crash) leaves at most hidden temporary files and a lock record, which the rerun
    removes and takes over; SIGTERM (preemption, ``ray job stop``) leaves neither."""
    classes = json.loads((gallery_dataset / "classes.json").read_text())
    model = untrained_model(tmp_path / "model", classes, dim=64)
    options = ["--model", model, "--dataset", gallery_dataset, "--batch-size", 100, "--threads-per-actor", 1]
    assert run_job("encode", *options, "--out", tmp_path / "whole", caplog=caplog)[0] == 0

    interrupted = tmp_path / "interrupted"
    job = start_job("encode", *options, "--out", interrupted, ray_address=ray_cluster.get_runtime_context().gcs_address)
    kill_when(job, interrupted / "part-00001.parquet", signal_number=stop)
    done_before = {path.name: path.stat().st_mtime_ns for path in interrupted.glob("part-*.parquet")}
    assert 2 <= len(done_before) < 10 and not (interrupted / "_COMPLETE.json").exists()
    if stop == signal.SIGTERM:
        assert job.returncode == 143 and not list(interrupted.glob(".*"))  # nothing temporary left
        assert (tmp_path / ".interrupted.lock").read_text() == ""  # the lock released, its record cleared

    code, log = run_job("encode", *options, "--out", interrupted, caplog=caplog)
    assert code == 0 and f"{len(done_before)} of 10 input files already encoded" in log
    took_over = re.search(rf"taking over the lock left by host \S+, pid {job.pid}, started ", log)
    assert bool(took_over) == (stop == signal.SIGKILL)  # only a killed job leaves its lock record
    assert {name: interrupted.joinpath(name).stat().st_mtime_ns for name in done_before} == done_before  # not redone
    assert not list(interrupted.glob(".*"))  # no temporary file left
    whole, resumed = folder_state(tmp_path / "whole"), folder_state(interrupted)
    assert whole.keys() == resumed.keys() and len(whole) == 11
    for name, (table, metadata) in ((n, v) for n, v in whole.items() if n.endswith(".parquet")):
        assert table.equals(resumed[name][0]) and metadata == resumed[name][1], name
    assert json.loads(whole["_COMPLETE.json"]) == json.loads(resumed["_COMPLETE.json"])


def synthetic_embeddings(folder: Path, name: str, rows: int, dim: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    labels = np.arange(rows) % 10
    vectors = rng.normal(size=(10, dim))[labels] + rng.normal(size=(rows, dim))
    table = embeddings_table([f"test-{i:06d}" for i in range(rows)], labels, vectors, f"{name}-id", name,
                             [f"c{i}" for i in range(10)])
    write_embeddings(folder / "part-00000.parquet", table)
    return folder


@pytest.mark.ray
@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM], ids=["killed", "preempted"])
def test_killed_score_resumes_to_the_same_report(tmp_path, ray_cluster, caplog, stop):
    """SIGKILL (a crash) leaves at most hidden temporary files and a lock record, which the rerun
    removes and takes over; SIGTERM (preemption, ``ray job stop``) leaves neither."""
    sets = [synthetic_embeddings(tmp_path / name, name, 3000, 64, seed) for seed, name in enumerate(("old", "a", "b"))]
    untrained_model(tmp_path / "old_model", [f"c{i}" for i in range(5)], name="old")
    options = ["--embeddings", *sets, "--old-model", tmp_path / "old_model",
               "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    assert run_job("score", *options, "--out", tmp_path / "whole", caplog=caplog)[0] == 0

    interrupted = tmp_path / "interrupted"
    job = start_job("score", *options, "--out", interrupted, ray_address=ray_cluster.get_runtime_context().gcs_address)
    kill_when(job, interrupted / "pairs" / "old__a.json", signal_number=stop)
    done_before = {path.name: path.stat().st_mtime_ns for path in (interrupted / "pairs").glob("*.json")}
    assert 2 <= len(done_before) < 9 and not (interrupted / "report.parquet").exists()
    if stop == signal.SIGTERM:
        assert job.returncode == 143 and not list(interrupted.rglob(".*"))  # nothing temporary left
        assert (tmp_path / ".interrupted.lock").read_text() == ""  # the lock released, its record cleared

    code, log = run_job("score", *options, "--out", interrupted, caplog=caplog)
    assert code == 0 and log.count("scored before") == len(done_before)
    took_over = re.search(rf"taking over the lock left by host \S+, pid {job.pid}, started ", log)
    assert bool(took_over) == (stop == signal.SIGKILL)  # only a killed job leaves its lock record
    assert {p.name: p.stat().st_mtime_ns for p in (interrupted / "pairs").glob("*.json") if p.name in done_before} \
        == done_before
    assert pq.read_table(interrupted / "report.parquet").equals(pq.read_table(tmp_path / "whole" / "report.parquet"))
    assert (interrupted / "report.csv").read_text() == (tmp_path / "whole" / "report.csv").read_text()
    assert not list(interrupted.rglob(".*"))


needs_root_to_mount = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs (a disk that fills) "
                                                                    "needs root")


@contextmanager
def small_disk(folder: Path, size: str) -> Iterator[Callable[[], None]]:
    """A tmpfs of ``size`` mounted at ``folder``, and a function that grows it (the user frees space)."""
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], check=True)
    try:
        yield lambda: subprocess.run(["mount", "-o", "remount,size=64m", str(folder)], check=True)
    finally:
        subprocess.run(["umount", str(folder)], check=True)


@needs_root_to_mount
def test_a_disk_that_fills_while_scoring_is_one_line_and_leaves_nothing_a_rerun_would_trust(tmp_path, caplog):
    sets = [synthetic_embeddings(tmp_path / name, name, 3000, 64, seed) for seed, name in enumerate(("old", "a"))]
    disk = tmp_path / "disk"
    with small_disk(disk, "160k") as grow:
        options = ["--embeddings", *sets, "--old", "old", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
        code, log = run_job("score", *options, "--out", disk / "report", caplog=caplog)
        full = rf"cannot write {re.escape(str(disk / 'report'))}/\S+: .*No space left on device"
        assert code == 2 and re.search(full, log), log[-2000:]
        assert not list(disk.rglob(".*.tmp-*")) and not (disk / "report" / "report.parquet").exists()
        for saved in (disk / "report" / "pairs").glob("*.json"):  # a pair's row is there only with its values
            assert saved.with_suffix(".queries.npz").is_file()
        grow()
        assert run_job("score", *options, "--out", disk / "report", caplog=caplog)[0] == 0
        assert run_job("score", *options, "--out", tmp_path / "whole", caplog=caplog)[0] == 0
        assert pq.read_table(disk / "report" / "report.parquet").equals(pq.read_table(tmp_path / "whole" / "report.parquet"))


@needs_root_to_mount
@pytest.mark.ray
def test_a_disk_that_fills_while_encoding_is_one_line_and_leaves_nothing_a_rerun_would_trust(tmp_path, gallery_dataset,
                                                                                            ray_cluster, caplog):
    """Parts are written whole or not at all: the rerun, once there is room, keeps the parts
    written before the disk filled and ends with the files of an encoding that never failed."""
    classes = json.loads((gallery_dataset / "classes.json").read_text())
    model = untrained_model(tmp_path / "model", classes, dim=64)
    options = ["--model", model, "--dataset", gallery_dataset, "--batch-size", 100, "--threads-per-actor", 1]
    out = tmp_path / "disk" / "embeddings"
    with small_disk(out.parent, "300k") as grow:
        code, log = run_job("encode", *options, "--out", out, caplog=caplog)
        full = rf"cannot write {re.escape(str(out))}/part-\d+\.parquet: .*No space left on device"
        assert code == 2 and re.search(full, log), log[-2000:]
        written = sorted(out.glob("part-*.parquet"))
        assert 0 < len(written) < 10 and not (out / "_COMPLETE.json").exists()
        assert not list(out.parent.rglob(".*.tmp-*"))
        grow()
        code, log = run_job("encode", *options, "--out", out, caplog=caplog)
        assert code == 0 and f"{len(written)} of 10 input files already encoded" in log
        assert run_job("encode", *options, "--out", tmp_path / "whole", caplog=caplog)[0] == 0
        assert folder_state(out) == folder_state(tmp_path / "whole")


HOLD_LOCK = """
import sys, time
from pipeline.atomic import one_writer
with one_writer(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.read()  # until the test closes it
"""


def test_a_second_job_on_a_report_folder_is_refused_naming_the_holder(tmp_path, caplog):
    sets = [synthetic_embeddings(tmp_path / name, name, 100, 8, seed) for seed, name in enumerate(("old", "a"))]
    out = tmp_path / "report"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        code, log = run_job("score", "--embeddings", *sets, "--old", "old", "--out", out,
                            "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", caplog=caplog)
        assert code == 2
        assert re.search(rf"{out} is being written by another job \(host {re.escape(os.uname().nodename)}, "
                         rf"pid {holder.pid}, started 20\d\d-\d\d-\d\dT[\d:]+\+00:00 ", log), log
        assert not out.exists()  # nothing written
    finally:
        holder.communicate("")
    assert run_job("score", "--embeddings", *sets, "--old", "old", "--out", out,
                   "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", caplog=caplog)[0] == 0


# ---------------------------------------------------------------- training faults


@pytest.mark.ray
def test_non_finite_loss_stops_naming_step_and_batch_and_keeps_the_last_good_checkpoint(tmp_path, small_dataset,
                                                                                       ray_cluster, caplog):
    """A learning rate of 1e12 (weight decay makes the weights overflow) turns the loss NaN in the
    second epoch; the run stops there. Run again, it resumes from that checkpoint, which is then
    truncated: the error names the file."""
    config = tmp_path / "boom.yaml"
    config.write_text("name: boom\nmethod: independent\nepochs: 6\nbatch_size: 512\nlr: 1.0e12\ncpus_per_worker: 1\n"
                      "model: {embedding_dim: 16}\n")
    command = ["--config", config, "--dataset", small_dataset, "--out", tmp_path / "artifact", "--storage-path",
               tmp_path / "ray", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    code, log = run_job("train", *command, caplog=caplog)
    stopped = re.search(r"loss (nan|inf): model 'boom' at epoch (\d+) step (\d+); batch ids \['train-\d+'.*"
                        r"the last good checkpoint stays in (\S+); no artifact written", log)
    assert code == 2 and stopped, log[-2000:]
    epoch, checkpoint = int(stopped.group(2)), Path(stopped.group(4)) / "checkpoint.pt"
    assert epoch >= 1 and not (tmp_path / "artifact" / "model.pt").exists()
    state = torch.load(checkpoint, weights_only=True)
    assert state["epoch"] == epoch - 1 and "embedder.embedding.0.weight" in state["model"]

    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    code, log = run_job("train", *command, caplog=caplog)
    assert code == 2 and f"model 'boom': cannot resume from {checkpoint}" in log


@pytest.mark.ray
def test_a_share_smaller_than_one_batch_is_one_line_naming_the_rows(tmp_path, small_dataset, ray_cluster, caplog):
    """A data_fraction that leaves fewer rows than one batch stops before any step: the message
    says so and that no checkpoint was saved (it failed with Ray's "Failed to restore the Result"
    instead, at 62e8cc9, on a 4,000-image dataset); min_rows raises the share (``share_with_rows``)."""
    config = tmp_path / "tiny.yaml"
    config.write_text("name: tiny\nmethod: independent\nepochs: 1\nbatch_size: 128\ndata_fraction: 0.01\n"
                      "cpus_per_worker: 1\nmodel: {embedding_dim: 16}\n")
    command = ["--config", config, "--dataset", small_dataset, "--out", tmp_path / "artifact", "--storage-path",
               tmp_path / "ray", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    code, log = run_job("train", *command, caplog=caplog)
    assert code == 2 and re.search(r"model 'tiny': \d+ training rows per worker, fewer than one batch of 128 .*"
                                   r"no checkpoint was saved; no artifact written", log), log[-2000:]
    config.write_text(config.read_text() + "min_rows: 256\n")
    code, log = run_job("train", *command, caplog=caplog)
    assert code == 0 and (tmp_path / "artifact" / "model.pt").is_file(), log[-2000:]


def _epochs_logged(server: str, name: str) -> tuple[list, set[int]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(server)
    experiment = client.get_experiment_by_name("outage")
    runs = [r for r in client.search_runs([experiment.experiment_id]) if r.info.run_name == name] if experiment else []
    return runs, {m.step for r in runs for m in client.get_metric_history(r.info.run_id, "train_loss")}


def test_epochs_the_tracking_server_missed_go_with_the_first_epoch_after_it_is_back(tmp_path, caplog):
    """What a training worker's logger does while the server is down for one epoch, then back."""
    from mlflow.tracking import MlflowClient

    from pipeline.tracking import EpochLogger, experiment_id

    server = MlflowServer(tmp_path / "mlflow").start()
    client = MlflowClient(server.url)
    run = client.create_run(experiment_id(server.url, "outage"), run_name="outage")
    logger = EpochLogger(server.url, run.info.run_id, {"lr": 0.1})
    logger.log_epoch({"train_loss": 3.0}, 0)
    server.kill()
    logger.log_epoch({"train_loss": 2.0}, 1)
    assert [entry["epoch"] for entry in logger.pending] == [1] and "did not take the metrics of epochs [1]" in caplog.text
    server.start()
    logger.log_epoch({"train_loss": 1.0}, 2)
    assert logger.pending == []
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert sorted((m.step, m.value) for m in history) == [(0, 3.0), (1, 2.0), (2, 1.0)]
    assert client.get_run(run.info.run_id).data.params == {"lr": "0.1"}
    server.kill()


@pytest.mark.ray
def test_mlflow_server_down_mid_training_ends_the_job_in_one_line_and_a_rerun_logs_every_epoch(
        tmp_path, small_dataset, ray_cluster, caplog):
    """The tracking server is killed once the first epoch reached it and stays down: training goes
    on, the job ends after its last checkpoint with one line naming the server; started again,
    the same command logs the epochs it missed into the same MLflow run."""
    server = MlflowServer(tmp_path / "mlflow").start()
    config = tmp_path / "outage.yaml"
    config.write_text("name: outage\nmethod: independent\nepochs: 3\nbatch_size: 64\nmin_steps: 120\n"
                      "cpus_per_worker: 1\nmodel: {embedding_dim: 16}\n")
    command = ["--config", config, "--dataset", small_dataset, "--out", tmp_path / "artifact", "--storage-path",
               tmp_path / "ray", "--tracking-uri", server.url, "--experiment", "outage"]
    job = subprocess.Popen([sys.executable, "-m", "jobs.train", *map(str, command)], stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True,
                           env={**os.environ, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address})
    deadline = time.monotonic() + 240
    while not _epochs_logged(server.url, "outage")[1]:
        assert job.poll() is None and time.monotonic() < deadline, "no epoch reached MLflow"
        time.sleep(0.5)
    server.kill()
    _, stderr = job.communicate(timeout=300)
    errors = [line for line in stderr.splitlines() if " ERROR jobs: " in line]
    assert job.returncode == 2 and len(errors) == 1, stderr[-3000:]
    assert f"MLflow at {server.url} does not answer" in errors[0] and "checkpoint is kept in" in errors[0]
    assert "did not take the metrics of epochs" in stderr  # the worker kept them, and trained on

    server.start()
    code, log = run_job("train", *command, caplog=caplog)
    assert code == 0, log[-3000:]
    runs, steps = _epochs_logged(server.url, "outage")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED" and steps == {0, 1, 2}
    server.kill()


def train_lce_against(folder: Path, dataset: Path, stats_classes: list[str], old_dim: int,
                      caplog: pytest.LogCaptureFixture) -> tuple[int, str]:
    """``jobs.train`` of a 16-d LCE model against an old model of ``old_dim`` and statistics over
    ``stats_classes``."""
    classes = json.loads((dataset / "classes.json").read_text())
    old = untrained_model(folder / "old", classes[:5], name="old", dim=old_dim)
    features = np.random.default_rng(0).normal(size=(100, old_dim))
    compute_old_space_stats(features, np.arange(100) % 10, stats_classes, stats_classes[:5]).save(folder / "stats.npz")
    (folder / "lce.yaml").write_text("name: lce\nmethod: lce_direct\nmodel: {embedding_dim: 16}\n")
    return run_job("train", "--config", folder / "lce.yaml", "--dataset", dataset, "--out", folder / "lce",
                   "--old-model", old, "--stats", folder / "stats.npz", caplog=caplog)


@pytest.mark.ray
def test_statistics_of_another_label_map_are_refused_naming_the_classes(tmp_path, small_dataset, ray_cluster, caplog):
    renamed = ["Tee" if c == "T-shirt/top" else c for c in json.loads((small_dataset / "classes.json").read_text())]
    code, log = train_lce_against(tmp_path, small_dataset, renamed, 16, caplog)
    assert code == 2 and f"{tmp_path / 'stats.npz'}: classes do not match the model's label map: " \
        "missing ['T-shirt/top'], not in the label map ['Tee']" in log


@pytest.mark.ray
def test_dimensions_that_differ_without_a_transformation_are_refused(tmp_path, small_dataset, ray_cluster, caplog):
    code, log = train_lce_against(tmp_path, small_dataset, json.loads((small_dataset / "classes.json").read_text()), 8,
                                  caplog)
    assert code == 2 and f"against statistics {tmp_path / 'stats.npz'}" in log
    assert "dimension 16 differs from old dimension 8" in log


def test_scoring_sets_of_two_label_maps_is_refused_naming_the_classes(tmp_path, caplog):
    first = synthetic_embeddings(tmp_path / "a", "a", 50, 8, 0)
    table = pq.read_table(first / "part-00000.parquet")
    classes = [f"c{i}" for i in range(9)] + ["zebra"]
    write_embeddings(tmp_path / "b" / "part-00000.parquet", embeddings_table(
        table.column("id").to_pylist(), table.column("label").to_numpy(), np.ones((50, 8)), "b-id", "b", classes))
    untrained_model(tmp_path / "old", ["c0"], name="a")
    code, log = run_job("score", "--embeddings", first, tmp_path / "b", "--old-model", tmp_path / "old", "--out",
                        tmp_path / "report", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", caplog=caplog)
    assert code == 2 and "different label maps: only the query's has ['c9'], only the gallery's has ['zebra']" in log


@pytest.mark.ray
def test_bad_model_artifacts_are_named(tmp_path, small_dataset, ray_cluster, caplog):
    """Weights of another architecture, a truncated and a missing weights file: encode stops before
    any work, naming the file."""
    classes = json.loads((small_dataset / "classes.json").read_text())
    model = untrained_model(tmp_path / "model", classes)
    card = json.loads((model / "card.json").read_text())
    encode = ["--dataset", small_dataset, "--out", tmp_path / "out"]

    card["model"]["architecture"] = "resnet18"
    (model / "card.json").write_text(json.dumps(card))
    code, log = run_job("encode", "--model", model, *encode, caplog=caplog)
    assert code == 2 and f"{model / 'model.pt'}: weights do not match the card's architecture resnet18" in log

    weights = model / "model.pt"
    weights.write_bytes(weights.read_bytes()[:500])
    code, log = run_job("encode", "--model", model, *encode, caplog=caplog)
    assert code == 2 and f"{weights}: cannot read weights" in log
    weights.unlink()
    code, log = run_job("encode", "--model", model, *encode, caplog=caplog)
    assert code == 2 and f"{weights}: weights file not found" in log


@pytest.mark.ray
def test_pickled_objects_in_a_weights_file_are_not_loaded(tmp_path, ray_cluster, caplog):
    """weights_only=True: a weights file that would run code when unpickled is refused."""
    model = untrained_model(tmp_path / "model", ["a", "b"])
    torch.save({"payload": Exploit()}, model / "model.pt")
    code, log = run_job("encode", "--model", model, "--dataset", tmp_path, "--out", tmp_path / "out", caplog=caplog)
    assert code == 2 and "cannot read weights (UnpicklingError" in log and not (tmp_path / "exploited").exists()


class Exploit:
    def __reduce__(self):
        return (Path.touch, (Path("exploited").resolve(),))


# ---------------------------------------------------------------- configs and names


@pytest.mark.parametrize(("yaml_text", "message"), [
    ("old: {name: old}\nnew: [{name: lce, compat: {compactness_margin: -0.1}}]\n",
     "key 'new.0.compat.compactness_margin': Input should be greater than or equal to 0 (got -0.1)"),
    ("old: {name: old, epochs: four}\nnew: [{name: lce}]\n", "key 'old.epochs': Input should be a valid integer"),
    ("old: {name: old}\nnew: [{name: lce}]\nscore: {topk: [1, 0]}\n", "key 'score.topk.1': Input should be greater than 0 (got 0)"),
    ("old: {name: ../old}\nnew: [{name: lce}]\n", "key 'old.name': String should match pattern"),
])
def test_bad_configs_give_one_message_naming_the_key(tmp_path, caplog, yaml_text, message):
    (tmp_path / "bad.yaml").write_text(yaml_text)
    code, log = run_job("pipeline", "--config", tmp_path / "bad.yaml", caplog=caplog)
    assert code == 2 and message in log
    assert len([line for line in log.splitlines() if "ERROR" in line]) == 1


def test_k_larger_than_the_gallery_names_the_key(tmp_path, caplog):
    sets = [synthetic_embeddings(tmp_path / name, name, 30, 8, seed) for seed, name in enumerate(("old", "new"))]
    untrained_model(tmp_path / "old_model", ["c0"], name="old")
    code, log = run_job("score", "--embeddings", *sets, "--old-model", tmp_path / "old_model", "--topk", 1, 30,
                        "--out", tmp_path / "report", "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}", caplog=caplog)
    assert code == 2 and "score.topk: k = 30 is larger than the gallery" in log and "one of them the query itself" in log


def test_model_names_that_would_become_paths_are_refused(tmp_path, caplog):
    vectors = np.ones((3, 4))
    write_embeddings(tmp_path / "evil" / "part-00000.parquet",
                     embeddings_table(["a", "b", "c"], np.zeros(3), vectors, "x", "../../etc", ["c0"]))
    untrained_model(tmp_path / "old_model", ["c0"], name="old")
    code, log = run_job("score", "--embeddings", tmp_path / "evil", "--old-model", tmp_path / "old_model", "--out",
                        tmp_path / "report", caplog=caplog)
    assert code == 2 and "model name '../../etc' is not allowed" in log


# ---------------------------------------------------------------- fuzz


def test_fuzz_ingest_random_image_bytes(tmp_path, caplog):
    rng = np.random.default_rng(7)
    source = tmp_path / "src"
    for name in ("coat", "shirt"):
        (source / name).mkdir(parents=True)
    files = {}
    for index, data in enumerate(mutated_images(rng, 80)):
        relative = f"{('coat', 'shirt')[index % 2]}/{index:03d}.png"
        (source / relative).write_bytes(data)
        files[relative] = data
    code, log = run_job("ingest", "--source", source, "--out", tmp_path / "strict", caplog=caplog)
    assert code == 2 and re.search(r"row '(coat|shirt)/\d{3}\.png': ", log)
    code, log = run_job("ingest", "--source", source, "--out", tmp_path / "ds", "--on-bad-rows", "skip", caplog=caplog)
    assert code == 0, log
    kept = pq.read_table(tmp_path / "ds" / "train").column("id").to_pylist() + \
        pq.read_table(tmp_path / "ds" / "test").column("id").to_pylist()
    listed = json.loads((tmp_path / "ds" / "bad_rows.json").read_text())
    skipped = [row["id"] for split in listed.values() for row in split["rows"]]
    assert sorted(kept + skipped) == sorted(files) and len(kept) >= 20  # every row kept or listed, none twice


def random_value(rng: np.random.Generator):
    return [None, "x", -1, 0, 3, 1e9, -0.5, 2.5, True, [], [1, "a"], {}, {"k": 1}, "first_half", "lce_direct"][
        int(rng.integers(0, 15))]


def mutate(value, rng: np.random.Generator, rate: float):
    """``value`` with keys dropped, added or retyped and values replaced, each at ``rate``."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            roll = rng.random()
            if roll < rate:
                continue
            out[key] = random_value(rng) if roll < 2 * rate else mutate(item, rng, rate)
        if rng.random() < rate:
            out[f"unknown_{int(rng.integers(0, 100))}"] = random_value(rng)
        return out
    if isinstance(value, list):
        return [mutate(item, rng, rate) for item in value if rng.random() > rate]
    return random_value(rng) if rng.random() < rate else value


def test_fuzz_configs_fail_only_with_config_errors(tmp_path):
    """Random edits of the shipped configs, and random bytes as YAML: each loads, or fails with a
    ConfigError (one message naming the file and key); never another exception."""
    rng = np.random.default_rng(3)
    loaders = {"configs/demo.yaml": load_pipeline_config, "configs/lineage.yaml": load_lineage_config,
               "tuning/configs/demo.yaml": load_sweep_config}
    outcomes = {"loaded": 0, "refused": 0}
    for trial in range(300):
        shipped = list(loaders)[trial % len(loaders)]
        path = tmp_path / f"fuzz-{trial}.yaml"
        if trial % 10 == 9:
            path.write_bytes(rng.bytes(int(rng.integers(0, 200))))
        else:
            rate = (0.005, 0.02, 0.1)[trial // len(loaders) % 3]
            path.write_text(yaml.safe_dump(mutate(yaml.safe_load(Path(shipped).read_text()), rng, rate)))
        try:
            loaders[shipped](path)
            outcomes["loaded"] += 1
        except ConfigError as error:
            assert str(error).startswith(str(path)), error
            outcomes["refused"] += 1
    assert outcomes["loaded"] >= 20 and outcomes["refused"] >= 100, outcomes


def _calls(text: str, name: str) -> list[str]:
    """The argument text of every ``name(...)`` call in ``text``."""
    calls = []
    for start in (m.end() for m in re.finditer(re.escape(name) + r"\(", text)):
        depth, end = 1, start
        while depth:
            depth += {"(": 1, ")": -1}.get(text[end], 0)
            end += 1
        calls.append(text[start : end - 1])
    return calls


def test_nothing_is_unpickled_from_files():
    """Every checkpoint and weights load is weights_only, every .npz load refuses pickles, and
    no module imports pickle."""
    sources = [p for folder in ("pipeline", "jobs", "tuning", "scripts") for p in Path(folder).rglob("*.py")]
    loads = []
    for path in sources:
        text = path.read_text()
        assert not re.search(r"^\s*(import|from) (pickle|cloudpickle|dill|joblib)\b", text, re.M), path
        loads += [(path, "torch", call) for call in _calls(text, "torch.load")]
        loads += [(path, "np", call) for call in _calls(text, "np.load")]
    assert len(loads) >= 6
    for path, kind, call in loads:
        assert ("weights_only=True" if kind == "torch" else "allow_pickle=False") in call, (path, call)
