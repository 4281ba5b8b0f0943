"""Every index setting in one place: the kinds of index the project builds, their faiss factory
strings, the rule for IVF lists and the schemas with their defaults. Scoring
(``pipeline.score.retrieval``), the backfill's index table (``pipeline.score.indexes``), the
serving store (``pipeline.index.store``) and the jobs' options all read them here."""

from __future__ import annotations

import math
from typing import Literal, get_args

from pydantic import Field, PositiveInt

from pipeline.config.base import Strict

ScoringKind = Literal["flat", "ivf"]   # how the matrix searches: exact, or inverted lists over flat vectors
IndexKind = Literal["flat", "ivf-flat", "ivf-pq", "hnsw"]  # the approximate indexes a backfill is measured on
SCORING_KINDS: tuple[str, ...] = get_args(ScoringKind)
INDEX_KINDS: tuple[str, ...] = get_args(IndexKind)
SERVING_KINDS = ("flat", "ivf-flat", "ivf-pq")  # the kinds whose vectors a backfill can replace (HNSW removes none)
TRAINED_KINDS = ("ivf-flat", "ivf-pq")  # the kinds that learn from vectors before any is added
FACTORY = {"flat": "Flat", "ivf-flat": "IVF{nlist},Flat", "ivf-pq": "IVF{nlist},PQ{pq_bytes}x8np",
           "hnsw": "HNSW{hnsw_neighbours}"}
# "np": no polysemous training of the PQ codes (10x its training time here, for a Hamming filter no search uses)
PQ_CENTROIDS = 256  # 8-bit codes


def ivf_lists(size: int, configured: int = 0) -> int:
    """IVF lists for a gallery of ``size`` vectors: ``configured`` when set, else about
    ``4 sqrt(size)`` and at most ``size / 39`` (faiss's fewest training points per list), at least 1.
    The one rule of every IVF index the project builds (scoring, the backfill table, serving)."""
    return configured or max(1, min(int(4 * math.sqrt(size)), size // 39))


class IndexConfig(Strict):
    """How each search finds neighbours: exact (``flat``) or inverted lists (``ivf``, probing
    ``nprobe`` of ``nlist`` lists; ``nlist`` 0: ``ivf_lists``' rule)."""

    kind: ScoringKind = "flat"
    nlist: int = Field(0, ge=0)
    nprobe: int = Field(16, ge=1)


class MixedIndexConfig(Strict):
    """The approximate indexes measured on a gallery that mixes parent and new vectors while a
    backfill runs (``pipeline.score.indexes``): faiss factory strings built from these values."""

    kinds: list[IndexKind] = Field(
        ["flat", "ivf-flat", "ivf-pq", "hnsw"], min_length=1, description="flat (exact), IVF<nlist>,Flat, "
        "IVF<nlist>,PQ<pq_bytes>x8np (no polysemous training), HNSW<hnsw_neighbours>; to leave the table out, "
        "steps 0")
    k: PositiveInt = Field(10, description="recall@k against flat search on the same mixed gallery, mAP@k")
    nlist: int = Field(0, ge=0, description="IVF lists; 0: about 4 sqrt(gallery), at most gallery/39 (faiss's "
                                            "fewest training points per list; ivf_lists)")
    nprobe: PositiveInt = 16
    pq_bytes: int = Field(0, ge=0, description="PQ code bytes per vector (a divisor of the dimension); 0: half "
                                               "the dimension")
    hnsw_neighbours: PositiveInt = 32
    ef_search: PositiveInt = 64
    steps: int = Field(4, ge=0, description="shares 0, 1/steps, ..., 1 of the gallery re-encoded; 0: no table")
    latency_queries: PositiveInt = Field(200, description="queries searched one at a time for p50/p99 latency")
    min_recall: float = Field(0.95, gt=0, le=1, description="an index holds recall when its recall@k is at least "
                                                            "this at every share")



def factory_string(config: MixedIndexConfig, kind: str, dim: int, size: int) -> str:
    """The faiss factory string of ``kind`` for a gallery of ``size`` vectors of dimension ``dim``."""
    nlist = ivf_lists(size, config.nlist)
    pq_bytes = config.pq_bytes or max(1, dim // 2)
    if kind == "ivf-pq" and dim % pq_bytes:
        chosen = "" if config.pq_bytes else " (0: half the dimension)"
        raise ValueError(f"indexes.pq_bytes {pq_bytes}{chosen} does not divide the embedding dimension {dim}")
    if kind == "ivf-pq" and size < PQ_CENTROIDS:
        raise ValueError(f"IVF-PQ learns {PQ_CENTROIDS} centroids per sub-vector: a gallery of {size} vectors is too "
                         "small for it (leave ivf-pq out of indexes.kinds)")
    if kind in TRAINED_KINDS and nlist > size:
        raise ValueError(f"indexes.nlist {nlist} is more lists than the gallery's {size} vectors")
    return FACTORY[kind].format(nlist=nlist, pq_bytes=pq_bytes, hnsw_neighbours=config.hnsw_neighbours)
