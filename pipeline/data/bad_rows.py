"""Rows that break the dataset contract, and what a job does with them.

A row is bad when its image bytes do not decode, its label is missing, or its label is not an
index of ``classes.json``. Under the policy ``"error"`` (the default) the job stops at the first
one with a message naming the file or split and the row id; under ``"skip"`` the row is left
out, and counted and listed with its problem so that nothing is lost silently.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

POLICIES = ("error", "skip")


class DataError(ValueError):
    """Input data that breaks the dataset contract."""


def label_problem(label: Any, num_classes: int) -> str | None:
    """Why ``label`` cannot be a dataset label of ``num_classes`` classes, or None."""
    if label is None or (isinstance(label, float) and math.isnan(label)):
        return "missing label"
    if not 0 <= int(label) < num_classes:
        return f"label {int(label)} outside classes.json ({num_classes} classes)"
    return None


@dataclass
class BadRows:
    """The bad rows met while reading ``where`` under ``policy``; ``keep`` decides row by row."""

    policy: str
    where: str
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (row id, problem)

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"on_bad_rows: {self.policy!r} is not one of {list(POLICIES)}")

    def keep(self, row_id: str, problem: str | None) -> bool:
        """True for a good row; a bad one stops the job (``error``) or is recorded (``skip``)."""
        if problem is None:
            return True
        if self.policy == "error":
            raise DataError(f"{self.where}: row {row_id!r}: {problem} "
                            "(on_bad_rows: skip leaves such rows out, counted and listed)")
        self.skipped.append((row_id, problem))
        return False

    def summary(self) -> dict[str, Any]:
        """How many rows were skipped, per problem, and which (JSON-ready)."""
        return {"skipped": len(self.skipped), "by_problem": dict(Counter(p for _, p in self.skipped)),
                "rows": [{"id": row_id, "problem": problem} for row_id, problem in self.skipped]}
