"""Running the real jobs in the test process, and artifacts for them to read."""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from jobs.cli import run_main
from pipeline.config import ModelConfig
from pipeline.data.embeddings import embeddings_table, write_embeddings
from pipeline.model.artifacts import write_initial_model


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


def untrained_model(folder: Path, classes: list[str], name: str = "m", dim: int = 16, seed: int = 0,
                    image_size: int = 28) -> Path:
    """A model artifact with initial weights, reading grey images of ``image_size`` px: enough to
    encode, and deterministic."""
    torch.manual_seed(seed)
    return write_initial_model(folder, name, ModelConfig(architecture="small_cnn", embedding_dim=dim), classes,
                               image_size=image_size, model_id=f"{name}-{seed}")


def folder_state(folder: Path) -> dict[str, tuple[pa.Table, dict]]:
    """Every file of ``folder``: Parquet as (table, metadata), others as text."""
    state = {}
    for path in sorted(folder.iterdir()):
        if path.suffix == ".parquet":
            state[path.name] = (pq.read_table(path), pq.read_schema(path).metadata)
        elif path.is_file():
            state[path.name] = path.read_text()
    return state


def synthetic_sets(folder: Path, size: int, classes: list[str], seed: int = 0) -> dict[tuple[str, str], Path]:
    """Embeddings sets of (split, model), 16-d, of the splits test (``size`` rows) and train (400):
    ``old``; ``new``, near the same class centers, tighter (compatible with old); ``rotated``, new
    turned by a random rotation (not)."""
    rng = np.random.default_rng(seed)
    written = {}
    for split, rows in (("test", size), ("train", 400)):
        labels = rng.integers(0, len(classes), rows)
        centers = np.random.default_rng(seed + 1).normal(size=(len(classes), 16))
        vectors = {"old": centers[labels] + 1.2 * rng.normal(size=(rows, 16)),
                   "new": centers[labels] + 0.6 * rng.normal(size=(rows, 16))}
        vectors["rotated"] = vectors["new"] @ np.linalg.qr(rng.normal(size=(16, 16)))[0]
        ids = [f"{split}-{i:04d}" for i in range(rows)]
        for name, values in vectors.items():
            path = folder / split / name
            write_embeddings(path / "part-00000.parquet",
                             embeddings_table(ids, labels, values, f"{name}-card", name, classes))
            written[split, name] = path
    return written
