"""Matrix entries: each model's embeddings set and the transformed sets, with what each is
compared with, and the roles the criteria give some of them (the old model, the independent one)."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.data.embeddings import EmbeddingFiles, EmbeddingSet


@dataclass(frozen=True)
class MatrixEntry:
    embeddings: EmbeddingSet | EmbeddingFiles
    reference: str    # whose M(g, g) a gallery of this entry is compared with
    transform: str    # "none", or which transformation of which model made it
    counterpart: str  # the entry it is compatible with: the old model, or for an old gallery
                      # mapped by T12, the new model whose queries search it
    base: str         # the model whose own embeddings (new/new) this entry stands for

    @classmethod
    def plain(cls, name: str, embeddings: EmbeddingSet | EmbeddingFiles, old: str) -> "MatrixEntry":
        """A model's own embeddings, compatible (or not) with ``old``'s."""
        return cls(embeddings, name, "none", old, name)


@dataclass(frozen=True)
class MatrixRoles:
    """Which entries the criteria compare against (``pipeline.score.matrix.score_all_pairs``)."""

    old: str | None = None                # the old model: update gains are measured on its gallery
    old_classes: list[str] | None = None  # the classes it was trained on: the seen / unseen query subsets
    independent: str | None = None        # the reference new model of the update gain


def describe(entries: dict[str, MatrixEntry]) -> dict[str, dict[str, str]]:
    """What each entry is, as the report's ``entries.json`` records it."""
    return {name: {"reference": e.reference, "transform": e.transform, "counterpart": e.counterpart, "base": e.base}
            for name, e in entries.items()}


def counterpart_pairs(entries: dict[str, MatrixEntry]) -> list[tuple[str, str]]:
    """Each plain model with itself; each new model or T21 entry as queries against the old
    gallery; each T12-mapped old gallery both ways with its new model (new queries against it,
    and as queries against the new gallery: old/new). Pairs of two dimensions are left out."""
    pairs = [(name, name) for name, entry in entries.items() if entry.transform == "none"]
    for name, entry in entries.items():
        if name == entry.counterpart:
            continue
        pairs.append((name, entry.counterpart))
        if entry.reference != name and entry.transform != "none":  # an old gallery mapped by T12
            pairs.append((entry.counterpart, name))
    return [(q, g) for q, g in dict.fromkeys(pairs) if entries[q].embeddings.dim == entries[g].embeddings.dim]


def model_pairs(entries: dict[str, MatrixEntry]) -> list[tuple[str, str]]:
    """Every ordered pair of the plain models (the whole N x N matrix), then each transformed
    entry with what ``counterpart_pairs`` scores it against; pairs of two dimensions left out."""
    plain = [name for name, entry in entries.items() if entry.transform == "none"]
    pairs = [(q, g) for q in plain for g in plain] + counterpart_pairs(entries)
    return [(q, g) for q, g in dict.fromkeys(pairs) if entries[q].embeddings.dim == entries[g].embeddings.dim]
