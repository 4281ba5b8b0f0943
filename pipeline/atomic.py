"""Writing files so that a partial file never appears under the final name (a killed job leaves
at most a hidden temporary file, which the next run removes), and one writer at a time per folder."""

from __future__ import annotations

import fcntl
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def write_atomic(path: str | Path, write: Callable[[Path], None]) -> None:
    """``write(temporary)``, then an atomic rename of the temporary file to ``path``. The
    temporary name is unique to this call, so that two writers of one path (two threads of a
    process included) never rename each other's file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:12]}")
    write(temporary)
    os.replace(temporary, path)


def write_text_atomic(path: str | Path, text: str) -> None:
    """``text`` written to ``path`` through a temporary name and an atomic rename."""
    write_atomic(path, lambda temporary: temporary.write_text(text))


def write_table_atomic(table: pa.Table, path: str | Path) -> None:
    """Write ``table`` as Parquet to ``path`` through a temporary name and an atomic rename."""
    write_atomic(path, lambda temporary: pq.write_table(table, temporary))


@contextmanager
def one_writer(folder: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` while the block writes into it: a second writer, in
    another thread or process of this machine (or on a file system with POSIX locks), waits for
    the first and then finds its work done. The lock file sits beside the folder
    (``.<name>.lock``), so that taking it touches nothing inside."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
