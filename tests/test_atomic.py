"""Atomic writes and the folder writer lock: threads of one process take turns, temporary names
are never shared, and a lock a killed process left is taken over."""

import errno
import logging
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pytest

import numpy as np

from pipeline.atomic import one_writer, write_atomic, write_npz_atomic
from tests.jobs.test_bad_input import HOLD_LOCK


def test_threads_writing_one_path_never_share_a_temporary_name(tmp_path):
    used, lock = [], threading.Lock()

    def write(temporary: Path) -> None:
        with lock:
            used.append(temporary.name)
        temporary.write_text(temporary.name)
        time.sleep(0.01)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: write_atomic(tmp_path / "file.json", write), range(32)))
    assert len(set(used)) == 32
    assert (tmp_path / "file.json").read_text() in used and sorted(p.name for p in tmp_path.iterdir()) == ["file.json"]


def test_npz_keeps_its_name_and_a_failed_write_leaves_nothing(tmp_path):
    write_npz_atomic(tmp_path / "stats.npz", centers=np.eye(3, dtype=np.float32))
    with np.load(tmp_path / "stats.npz") as saved:
        assert saved["centers"].tolist() == np.eye(3).tolist()
    with pytest.raises(ValueError):  # an object array cannot be saved without pickling
        write_npz_atomic(tmp_path / "bad.npz", rows=np.array([{"a": 1}], dtype=object), allow_pickle=False)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["stats.npz"]


def test_threads_of_one_process_take_turns_on_a_folder(tmp_path):
    inside, most = [0], [0]

    def hold(_):
        with one_writer(tmp_path / "out"):
            inside[0] += 1
            most[0] = max(most[0], inside[0])
            time.sleep(0.02)
            inside[0] -= 1

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(hold, range(8)))
    assert most[0] == 1


def test_a_lock_left_by_a_killed_process_is_taken_over_with_a_log_line(tmp_path, caplog):
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path / "out")], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    holder.kill()
    holder.wait()
    caplog.set_level(logging.WARNING, logger="pipeline.atomic")
    with one_writer(tmp_path / "out"):
        pass
    assert f"pid {holder.pid}, started " in caplog.text and "which no longer runs" in caplog.text
    caplog.clear()
    with one_writer(tmp_path / "out"):  # released cleanly last time: nothing to take over
        pass
    assert caplog.text == ""


def test_a_write_that_fails_without_naming_a_file_is_named_and_leaves_nothing(tmp_path):
    """pyarrow's ENOSPC (here from /dev/full, a disk always full) names no file: the error names
    the file being written and keeps its errno and type; the temporary file is gone."""
    def write(temporary: Path) -> None:
        temporary.write_text("partial")
        with pa.OSFile("/dev/full", "wb") as full:
            full.write(b"x" * 2**20)

    with pytest.raises(OSError, match=rf"cannot write {re.escape(str(tmp_path / 'part.parquet'))}: .*No space left "
                                      r"on device") as raised:
        write_atomic(tmp_path / "part.parquet", write)
    assert type(raised.value) is OSError and raised.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []
