"""Writing files so that a partial file never appears under the final name (a killed job leaves
at most a hidden temporary file, which the next run removes), and one writer at a time per folder:
another job writing the same folder is refused, naming it."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import FolderInUse

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)


def write_atomic(path: str | Path, write: Callable[[Path], None]) -> None:
    """``write(temporary)``, then an atomic rename of the temporary file to ``path``. The
    temporary name is unique to this call, so that two writers of one path (two threads of a
    process included) never rename each other's file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:12]}")
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException as error:  # a failed or stopped write (a full disk, SIGTERM) leaves nothing behind
        temporary.unlink(missing_ok=True)
        if isinstance(error, OSError) and error.filename in (None, str(temporary)):  # pyarrow's name none
            # the errno form makes the same subclass (ENOSPC: OSError, ENOENT: FileNotFoundError)
            named = f"cannot write {path}: {error.strerror or error}"
            raise (OSError(error.errno, named) if error.errno else OSError(named)) from error
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    """``text`` written to ``path`` through a temporary name and an atomic rename."""
    write_atomic(path, lambda temporary: temporary.write_text(text))


def write_npz_atomic(path: str | Path, **arrays: Any) -> None:
    """``np.savez`` of ``arrays`` to ``path`` through a temporary name and an atomic rename (through
    a handle: given a name, ``np.savez`` would add ".npz" to the temporary one)."""
    import numpy as np

    def write(temporary: Path) -> None:
        with open(temporary, "wb") as handle:
            np.savez(handle, **arrays)

    write_atomic(path, write)


def write_table_atomic(table: "pa.Table", path: str | Path) -> None:
    """Write ``table`` as Parquet to ``path`` through a temporary name and an atomic rename."""
    import pyarrow.parquet as pq  # here: the jobs' error handling imports this module before --help

    write_atomic(path, lambda temporary: pq.write_table(table, temporary))


_THREAD_LOCKS: dict[Path, threading.Lock] = {}
_THREAD_LOCKS_GUARD = threading.Lock()


def _holder(lock_file: Path) -> str | None:
    """Who wrote ``lock_file``'s record: ``host H, pid P, started T (command)``; None when empty."""
    try:
        record = json.loads(lock_file.read_text() or "null")
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(record, dict):
        return None
    return f"host {record.get('host')}, pid {record.get('pid')}, started {record.get('started')} ({record.get('command')})"


@contextmanager
def one_writer(folder: str | Path) -> Iterator[None]:
    """Hold the writer lock of ``folder`` while the block writes into it.

    Threads of this process take turns (the second waits, then finds the work done). Another
    process, of this host or of one sharing the file system with POSIX locks, is refused with
    ``FolderInUse`` naming the holder. The lock file (``.<name>.lock``, beside the folder, so that
    taking it touches nothing inside) records its holder; a record whose lock is free was left by
    a process that died holding it, and is taken over with a log line (the kernel frees a dead
    process's lock, so a stale record never blocks)."""
    folder = Path(folder).resolve()
    folder.parent.mkdir(parents=True, exist_ok=True)
    lock_file = folder.parent / f".{folder.name}.lock"
    with _THREAD_LOCKS_GUARD:
        in_process = _THREAD_LOCKS.setdefault(lock_file, threading.Lock())
    with in_process, open(lock_file, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FolderInUse(f"{folder} is being written by another job ({_holder(lock_file) or 'holder unknown'}; "
                              f"lock {lock_file}): wait for it to end, or stop it and run again") from None
        try:
            if (left := _holder(lock_file)) is not None:
                log.warning("%s: taking over the lock left by %s, which no longer runs", folder, left)
            record = {"host": socket.gethostname(), "pid": os.getpid(), "command": " ".join(sys.argv),
                      "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
            handle.truncate(0)
            handle.write(json.dumps(record))
            handle.flush()
            yield
        finally:
            handle.truncate(0)
            fcntl.flock(handle, fcntl.LOCK_UN)
