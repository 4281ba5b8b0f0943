"""In which order to re-encode a gallery, free of I/O: an order predicted from the
parent's embedding alone, and an oracle order that needs the new embeddings and the labels (what
a perfect prediction would give; a reference, not something a backfill can use, and no bound on
every metric: on the demo lineage's v2 it is below random on top-1).

What re-encoding an item buys is measured where the new model's queries look: each item's
margin among the new model's class centers (cosine to its own class's center less the highest
cosine to another's), with its new vector less with its parent vector. The oracle re-encodes
items in decreasing benefit. The predicted order (as Apple's FastFill, ICLR 2023, orders by a
value predicted from the old embedding) ranks items by a ridge regression of that benefit on
features of the parent vector alone, fitted on the training split, where both models' vectors
and the labels are known; a gallery item's label and new vector are never read.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.score import normalize


def class_centers(vectors: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """The mean unit vector of each class (zeros for a class with no item)."""
    unit, centers = normalize(vectors), np.zeros((num_classes, vectors.shape[1]))
    for label in range(num_classes):
        members = unit[labels == label]
        if len(members):
            centers[label] = members.mean(axis=0)
    return centers


def margins(vectors: np.ndarray, labels: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Per item: cosine to its class's center less the highest cosine to another class's center."""
    similarities = normalize(vectors) @ normalize(centers).T
    rows = np.arange(len(labels))
    own = similarities[rows, labels].copy()
    similarities[rows, labels] = -np.inf
    return own - similarities.max(axis=1)


def benefit(parent_vectors: np.ndarray, new_vectors: np.ndarray, labels: np.ndarray,
            query_centers: np.ndarray) -> np.ndarray:
    """What re-encoding each item moves it towards its class among the new queries' centers."""
    return margins(new_vectors, labels, query_centers) - margins(parent_vectors, labels, query_centers)


def oracle_order(parent_vectors: np.ndarray, new_vectors: np.ndarray, labels: np.ndarray,
                 query_centers: np.ndarray) -> np.ndarray:
    """Gallery positions by decreasing ``benefit`` (needs the new vectors and the labels)."""
    return np.argsort(-benefit(parent_vectors, new_vectors, labels, query_centers), kind="stable")


def parent_features(parent_vectors: np.ndarray, parent_centers: np.ndarray) -> np.ndarray:
    """What the predictor reads of a parent vector: the unit vector, its cosines to the
    parent-space class centers, the gap between the two highest, and a constant."""
    unit = normalize(parent_vectors)
    similarities = unit @ normalize(parent_centers).T
    top = np.sort(similarities, axis=1)[:, -2:]
    return np.hstack([unit, similarities, top[:, 1:] - top[:, :1], np.ones((len(unit), 1))])


@dataclass(frozen=True)
class BenefitPredictor:
    """Ridge regression of ``benefit`` on ``parent_features``."""

    parent_centers: np.ndarray  # [C, d] the parent's class centers on the training split
    weights: np.ndarray         # [F] over ``parent_features``

    def predict(self, parent_vectors: np.ndarray) -> np.ndarray:
        return parent_features(parent_vectors, self.parent_centers) @ self.weights


def fit_benefit_predictor(parent_vectors: np.ndarray, new_vectors: np.ndarray, labels: np.ndarray,
                          num_classes: int, ridge: float = 1.0) -> BenefitPredictor:
    """The ``BenefitPredictor`` of a training split that both models encoded (same rows)."""
    parent_centers = class_centers(parent_vectors, labels, num_classes)
    features = parent_features(parent_vectors, parent_centers)
    target = benefit(parent_vectors, new_vectors, labels, class_centers(new_vectors, labels, num_classes))
    gram = features.T @ features + ridge * np.eye(features.shape[1])
    return BenefitPredictor(parent_centers, np.linalg.solve(gram, features.T @ target))


def predicted_order(predictor: BenefitPredictor, parent_vectors: np.ndarray) -> np.ndarray:
    """Gallery positions by decreasing predicted benefit, from the parent vectors alone."""
    return np.argsort(-predictor.predict(parent_vectors), kind="stable")
