"""Shared fixtures: one local Ray cluster per session, tiny real datasets."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from pipeline.data.importers import read_idx

FASHION_MNIST = Path(os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))


def write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture(scope="session")
def fashion_subset(tmp_path_factory) -> Path:
    """An idx folder with the first 1,200 training and 400 test images of the real Fashion-MNIST."""
    if not (FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file():
        pytest.fail(f"Fashion-MNIST not found in {FASHION_MNIST}: run `make data` (installs dataset-fashion-mnist)")
    folder = tmp_path_factory.mktemp("fashion-mnist-subset")
    for prefix, count in (("train", 1200), ("t10k", 400)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", read_idx(FASHION_MNIST / f"{prefix}-images-idx3-ubyte.gz")[:count])
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", read_idx(FASHION_MNIST / f"{prefix}-labels-idx1-ubyte.gz")[:count])
    return folder


@pytest.fixture(scope="session")
def ray_cluster():
    """A real local Ray cluster shared by every test that needs one."""
    import ray

    ray.init(num_cpus=2, runtime_env={"env_vars": {"PYTHONPATH": str(Path.cwd())}})
    yield ray
    ray.shutdown()
