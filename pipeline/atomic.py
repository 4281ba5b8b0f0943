"""Writing files so that a partial file never appears under the final name (a killed job leaves
at most a hidden temporary file, which the next run removes or overwrites)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def write_atomic(path: str | Path, write: Callable[[Path], None]) -> None:
    """``write(temporary)``, then an atomic rename of the temporary file to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    write(temporary)
    os.replace(temporary, path)


def write_text_atomic(path: str | Path, text: str) -> None:
    """``text`` written to ``path`` through a temporary name and an atomic rename."""
    write_atomic(path, lambda temporary: temporary.write_text(text))


def write_table_atomic(table: pa.Table, path: str | Path) -> None:
    """Write ``table`` as Parquet to ``path`` through a temporary name and an atomic rename."""
    write_atomic(path, lambda temporary: pq.write_table(table, temporary))
