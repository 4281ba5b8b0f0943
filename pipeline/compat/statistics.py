"""Old-space statistics: class centers and boundaries measured with the old model.

They are computed once with model 1 over model 2's training images, for every class of model
2's label map, including classes model 1 never saw (docs/design.md, 'The old space, measured once'), and saved as an
``.npz`` file (no pickle) next to model 2's inputs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from pipeline.atomic import write_npz_atomic

BoundaryRule = Literal["max", "quantile", "iqr"]


class StatisticsMismatch(ValueError):
    """Statistics whose classes are not the label map they are used with."""


@dataclass(frozen=True)
class OldSpaceStats:
    classes: list[str]          # model 2's label map; row j of every array is class j
    old_classes: list[str]      # the classes model 1 was trained on
    centers: np.ndarray         # [C, d] unit vectors c_j
    boundaries: np.ndarray      # [C] boundary angles b_j in radians
    feature_means: np.ndarray   # [C, d] mean of model 1's raw features (BCT pseudo-classifier rows)
    counts: np.ndarray          # [C] images per class
    boundary_rule: str

    @property
    def dim(self) -> int:
        return int(self.centers.shape[1])

    def old_class_mask(self) -> np.ndarray:
        return np.array([name in self.old_classes for name in self.classes])

    def class_mask(self, old_classes_only: bool) -> np.ndarray:
        """The classes that get compatibility terms: the old model's, or all of them."""
        return self.old_class_mask() if old_classes_only else np.ones(len(self.classes), dtype=bool)

    def check_label_map(self, classes: list[str], source: str = "statistics") -> None:
        """Refuse statistics that do not cover exactly ``classes`` in the same order."""
        if list(classes) == self.classes:
            return
        missing = [c for c in classes if c not in self.classes]
        extra = [c for c in self.classes if c not in classes]
        detail = f"missing {missing}, not in the label map {extra}" if missing or extra else "same classes in another order"
        raise StatisticsMismatch(f"{source}: classes do not match the model's label map: {detail} "
                                 f"(statistics {self.classes} vs label map {list(classes)})")

    def save(self, path: str | Path) -> None:
        write_npz_atomic(path, centers=self.centers, boundaries=self.boundaries, feature_means=self.feature_means,
                         counts=self.counts, meta=np.array(json.dumps(
                             {"classes": self.classes, "old_classes": self.old_classes,
                              "boundary_rule": self.boundary_rule})))

    @classmethod
    def load(cls, path: str | Path) -> "OldSpaceStats":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: old-space statistics file not found")
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                stats = cls(classes=meta["classes"], old_classes=meta["old_classes"], centers=data["centers"],
                            boundaries=data["boundaries"], feature_means=data["feature_means"], counts=data["counts"],
                            boundary_rule=meta["boundary_rule"])
        except (KeyError, ValueError, OSError) as error:
            raise StatisticsMismatch(f"{path}: not an old-space statistics file ({error})") from None
        rows = {len(stats.classes), len(stats.centers), len(stats.boundaries), len(stats.feature_means)}
        if len(rows) != 1:
            raise StatisticsMismatch(f"{path}: {len(stats.classes)} classes but arrays of {sorted(rows)} rows")
        return stats


def boundary_angle(angles: np.ndarray, rule: BoundaryRule, quantile: float = 0.95) -> float:
    """The class boundary from its features' angles to the center: max, a quantile, or 1.5 IQR."""
    if rule == "max":
        return float(angles.max())
    if rule == "quantile":
        return float(np.quantile(angles, quantile))
    q1, q3 = np.quantile(angles, [0.25, 0.75])
    inside = angles[angles <= q3 + 1.5 * (q3 - q1)]
    return float(inside.max())


def compute_old_space_stats(features: np.ndarray, labels: np.ndarray, classes: list[str], old_classes: list[str],
                            rule: BoundaryRule = "quantile", quantile: float = 0.95,
                            classifier_rows: dict[str, np.ndarray] | None = None) -> OldSpaceStats:
    """Centers and boundaries of every class of ``classes`` from model 1's ``features``.

    ``labels`` index ``classes``. The center is the normalised mean of the normalised features,
    or, for a class of ``classifier_rows`` (model 1's classifier row of a class it knows), that
    row normalised; the boundary is the chosen statistic of the angles between features and
    their center.
    """
    features = np.asarray(features, dtype=np.float64)
    unit = features / np.linalg.norm(features, axis=1, keepdims=True).clip(1e-12)
    dim = features.shape[1]
    centers = np.zeros((len(classes), dim))
    means = np.zeros((len(classes), dim))
    boundaries = np.zeros(len(classes))
    counts = np.bincount(labels, minlength=len(classes))
    empty = [classes[j] for j in range(len(classes)) if counts[j] == 0]
    if empty:
        raise StatisticsMismatch(f"no training images for classes {empty}: every class of the label map needs statistics")
    for j in range(len(classes)):
        rows = labels == j
        center = unit[rows].mean(axis=0) if classes[j] not in (classifier_rows or {}) else classifier_rows[classes[j]]
        centers[j] = center / max(np.linalg.norm(center), 1e-12)
        means[j] = features[rows].mean(axis=0)
        angles = np.arccos(np.clip(unit[rows] @ centers[j], -1.0, 1.0))
        boundaries[j] = boundary_angle(angles, rule, quantile)
    return OldSpaceStats(classes=list(classes), old_classes=list(old_classes), centers=centers.astype(np.float32),
                         boundaries=boundaries.astype(np.float32), feature_means=means.astype(np.float32),
                         counts=counts.astype(np.int64), boundary_rule=rule)
