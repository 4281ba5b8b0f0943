"""Parquet writing that never leaves a partial file under the final name."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def write_table_atomic(table: pa.Table, path: str | Path) -> None:
    """Write ``table`` to ``path`` through a temporary name and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(table, temporary)
    os.replace(temporary, path)
