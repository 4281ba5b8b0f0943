"""Names that become file names and MLflow keys (model, run and registered-model names).

Kept free of heavy imports: the embeddings reader checks names without loading torch.
"""

from __future__ import annotations

import re

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def check_name(name: str, what: str = "model name") -> str:
    """``name`` if it is safe as a file name and an MLflow key: no path separators, no '..'."""
    if not SAFE_NAME.match(name) or ".." in name:
        raise ValueError(f"{what} {name!r} is not allowed: use letters, digits, '_', '-', '.' (no '..' or '/')")
    return name
