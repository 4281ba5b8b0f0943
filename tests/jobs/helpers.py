"""Running the real jobs in the test process, and artifacts for them to read."""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from jobs.cli import run_main
from pipeline.config import ModelConfig
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
