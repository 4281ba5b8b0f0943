"""Shared fixtures: one local Ray cluster per session, tiny real datasets."""

from __future__ import annotations

import gzip
import os
import socket
import struct
from pathlib import Path

import numpy as np
import pytest

from pipeline.data.importers import ingest, read_idx

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


def _remove_stale_bootstrap_file() -> None:
    """Remove ``/tmp/ray/ray_current_cluster`` when it names a Ray head that no longer listens (a
    ``ray start`` cluster killed without ``ray stop``, which would remove it). Ray's state API,
    which Ray Train's placement-group cleaner calls from inside the cluster, connects to the
    address in that file before looking for the running cluster, and times out on a dead one."""
    from ray._common.utils import get_ray_address_file

    path = Path(get_ray_address_file(None))
    if not path.is_file():
        return
    host, _, port = path.read_text().strip().rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
    except (OSError, ValueError):
        path.unlink(missing_ok=True)


# Ray Train's controller polls its workers every 2 s: each fit then waits up to 2 s to learn that its
# workers finished. A polling interval, not a timeout: what a test checks is unchanged.
FAST_POLLING = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25"}


@pytest.fixture(scope="session")
def ray_cluster():
    """A real local Ray cluster shared by every test that needs one: always a new one ("local"),
    never another Ray instance that happens to run on this machine."""
    import ray

    _remove_stale_bootstrap_file()
    ray.init(address="local", num_cpus=2, runtime_env={"env_vars": {"PYTHONPATH": str(Path.cwd()), **FAST_POLLING}})
    yield ray
    ray.shutdown()
