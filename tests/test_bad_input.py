"""Bad input, fed through the real jobs (their CLI entry points, on the session's Ray cluster):
each case ends in one clear message naming the row, key or file, or in a recorded skip, and
loses nothing."""

from __future__ import annotations

import importlib
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from jobs._common import run_main
from pipeline.artifacts import write_artifact
from pipeline.config import ModelConfig
from pipeline.data import DATASET_SCHEMA, ingest, read_idx
from pipeline.embeddings import embeddings_table, read_embeddings, write_embeddings
from pipeline.models import EmbeddingModel
from tests.conftest import FASHION_MNIST, write_idx


def run_job(job: str, *args, caplog: pytest.LogCaptureFixture) -> tuple[int, str]:
    """``python -m jobs.<job> args`` in this process: its exit code and what it logged."""
    module = importlib.import_module(f"jobs.{job}")
    argv, sys.argv = sys.argv, [f"jobs.{job}", *map(str, args)]
    caplog.clear()
    caplog.set_level(logging.INFO)
    try:
        run_main(module.main)
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    finally:
        sys.argv = argv
    return code, caplog.text


def png(value: int = 128, size: int = 28) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (size, size), value).save(buffer, format="PNG")
    return buffer.getvalue()


def untrained_model(folder: Path, classes: list[str], name: str = "m", dim: int = 16, seed: int = 0) -> Path:
    """A model artifact with initial weights: enough to encode, and deterministic."""
    torch.manual_seed(seed)
    config = ModelConfig(architecture="small_cnn", embedding_dim=dim)
    card = {"id": f"{name}-{seed}", "name": name, "model": config.model_dump(), "classes": classes, "channels": 1,
            "mode": "L", "image_size": 28, "method": "independent"}
    return write_artifact(folder, EmbeddingModel(config, 1, len(classes)).state_dict(), card)


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
def test_encode_bad_rows_stop_naming_file_and_row_or_are_skipped_and_listed(tmp_path, small_dataset, ray_cluster, caplog):
    classes = json.loads((small_dataset / "classes.json").read_text())
    model = untrained_model(tmp_path / "model", classes)
    dataset = dataset_with_test_rows(small_dataset, tmp_path / "ds", [
        ("good-1", png(), 1), ("bad-bytes", b"\x00garbage", 2), ("no-label", png(), None), ("label-99", png(), 99),
        ("no-image", None, 3), ("good-2", png(7), 4)])
    code, log = run_job("encode", "--model", model, "--dataset", dataset, "--out", tmp_path / "strict",
                        "--threads-per-actor", 1, caplog=caplog)
    assert code == 2 and "part-00099.parquet: row 'bad-bytes': image bytes cannot be decoded" in log
    assert not (tmp_path / "strict" / "_COMPLETE.json").exists()

    code, _ = run_job("encode", "--model", model, "--dataset", dataset, "--out", tmp_path / "lenient",
                      "--on-bad-rows", "skip", "--threads-per-actor", 1, caplog=caplog)
    assert code == 0
    marker = json.loads((tmp_path / "lenient" / "_COMPLETE.json").read_text())
    assert marker["rows"] == 402 and marker["bad_rows"]["skipped"] == 4
    problems = {row["id"]: row["problem"] for row in marker["bad_rows"]["rows"]}
    assert problems.pop("bad-bytes").startswith("image bytes cannot be decoded")
    assert problems == {"no-label": "missing label", "label-99": "label 99 outside classes.json (10 classes)",
                        "no-image": "no image bytes"}
    embeddings = read_embeddings(tmp_path / "lenient")
    assert len(embeddings) == 402 and {"good-1", "good-2"} <= set(embeddings.ids)
    assert not {"bad-bytes", "no-label", "label-99", "no-image"} & set(embeddings.ids)


@pytest.mark.ray
def test_encode_empty_split_is_an_error(tmp_path, small_dataset, ray_cluster, caplog):
    classes = json.loads((small_dataset / "classes.json").read_text())
    model = untrained_model(tmp_path / "model", classes)
    dataset = dataset_with_test_rows(small_dataset, tmp_path / "ds", [])
    for part in (dataset / "test").glob("part-000[0-8]*.parquet"):
        part.unlink()
    code, log = run_job("encode", "--model", model, "--dataset", dataset, "--out", tmp_path / "out", caplog=caplog)
    assert code == 2 and f"{dataset / 'test'}: no rows to encode" in log


# ---------------------------------------------------------------- interrupted jobs


def start_job(job: str, *args, ray_address: str) -> subprocess.Popen:
    """``python -m jobs.<job>`` as its own process on the session's Ray cluster."""
    return subprocess.Popen([sys.executable, "-m", f"jobs.{job}", *map(str, args)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "RAY_ADDRESS": ray_address})


def kill_when(process: subprocess.Popen, appeared: Path, timeout: float = 120) -> None:
    """SIGKILL ``process`` as soon as ``appeared`` exists."""
    deadline = time.monotonic() + timeout
    while not appeared.exists():
        assert process.poll() is None, f"the job ended (code {process.returncode}) before {appeared} appeared"
        assert time.monotonic() < deadline, f"{appeared} did not appear in {timeout} s"
        time.sleep(0.005)
    process.kill()
    process.wait()


def folder_state(folder: Path) -> dict[str, tuple[pa.Table, dict]]:
    """Every file of ``folder``: Parquet as (table, metadata), others as text."""
    state = {}
    for path in sorted(folder.iterdir()):
        if path.suffix == ".parquet":
            state[path.name] = (pq.read_table(path), pq.read_schema(path).metadata)
        elif path.is_file():
            state[path.name] = path.read_text()
    return state


@pytest.fixture(scope="module")
def gallery_dataset(tmp_path_factory) -> Path:
    """3,000 real Fashion-MNIST test images in 10 files of 300 (and 100 training rows)."""
    folder = tmp_path_factory.mktemp("gallery")
    (folder / "idx").mkdir()
    for prefix, count in (("train", 100), ("t10k", 3000)):
        for kind, rank in (("images", 3), ("labels", 1)):
            name = f"{prefix}-{kind}-idx{rank}-ubyte.gz"
            write_idx(folder / "idx" / name, read_idx(FASHION_MNIST / name)[:count])
    ingest(folder / "idx", folder / "dataset", rows_per_file=300)
    return folder / "dataset"


@pytest.mark.ray
def test_killed_encode_resumes_to_the_same_output(tmp_path, gallery_dataset, ray_cluster, caplog):
    classes = json.loads((gallery_dataset / "classes.json").read_text())
    model = untrained_model(tmp_path / "model", classes, dim=64)
    options = ["--model", model, "--dataset", gallery_dataset, "--batch-size", 100, "--threads-per-actor", 1]
    assert run_job("encode", *options, "--out", tmp_path / "whole", caplog=caplog)[0] == 0

    interrupted = tmp_path / "interrupted"
    job = start_job("encode", *options, "--out", interrupted, ray_address=ray_cluster.get_runtime_context().gcs_address)
    kill_when(job, interrupted / "part-00001.parquet")
    done_before = {path.name: path.stat().st_mtime_ns for path in interrupted.glob("part-*.parquet")}
    assert 2 <= len(done_before) < 10 and not (interrupted / "_COMPLETE.json").exists()

    code, log = run_job("encode", *options, "--out", interrupted, caplog=caplog)
    assert code == 0 and f"{len(done_before)} of 10 input files already encoded" in log
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
def test_killed_score_resumes_to_the_same_report(tmp_path, ray_cluster, caplog):
    sets = [synthetic_embeddings(tmp_path / name, name, 3000, 64, seed) for seed, name in enumerate(("old", "a", "b"))]
    write_artifact(tmp_path / "old_model", {}, {"name": "old", "classes": [f"c{i}" for i in range(5)]})
    options = ["--embeddings", *sets, "--old-model", tmp_path / "old_model",
               "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    assert run_job("score", *options, "--out", tmp_path / "whole", caplog=caplog)[0] == 0

    interrupted = tmp_path / "interrupted"
    job = start_job("score", *options, "--out", interrupted, ray_address=ray_cluster.get_runtime_context().gcs_address)
    kill_when(job, interrupted / "pairs" / "old__a.json")
    done_before = {path.name: path.stat().st_mtime_ns for path in (interrupted / "pairs").glob("*.json")}
    assert 2 <= len(done_before) < 9 and not (interrupted / "report.parquet").exists()

    code, log = run_job("score", *options, "--out", interrupted, caplog=caplog)
    assert code == 0 and log.count("scored before") == len(done_before)
    assert {p.name: p.stat().st_mtime_ns for p in (interrupted / "pairs").glob("*.json") if p.name in done_before} \
        == done_before
    assert pq.read_table(interrupted / "report.parquet").equals(pq.read_table(tmp_path / "whole" / "report.parquet"))
    assert (interrupted / "report.csv").read_text() == (tmp_path / "whole" / "report.csv").read_text()
    assert not list(interrupted.rglob(".*"))
