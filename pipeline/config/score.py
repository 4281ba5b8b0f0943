"""The schema of scoring (``pipeline.score``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt, model_validator

from pipeline.config.base import Strict
from pipeline.config.index import IndexConfig


class ScoreConfig(Strict):
    """What the matrix scores and how (``pipeline.score``)."""

    split: Literal["train", "test"] = Field("test", description="the split encoded by every model: the query "
                                            "and the gallery set")
    topk: list[PositiveInt] = Field([1, 5], min_length=1, description="k of the top-k accuracies; at most the "
                                    "gallery's size (checked when scoring)")
    query_chunk: int = Field(1024, gt=0, description="queries per full-ranking chunk (at most)")
    threads: int = Field(0, ge=0, description="threads of one pair's full ranking; 0: every CPU this process may "
                                              "use (a pair's Ray task sets its own CPUs)")
    index: IndexConfig = IndexConfig()
    full_ranking: bool = Field(True, description="mAP and mAP@R over the full ranking; false: top-k only, for "
                                                 "very large galleries")
    pairs: Literal["all", "models", "counterparts"] = Field(
        "all", description="all: every ordered pair of equal dimension; models: every pair of the models (the N x N "
                           "matrix) and each transformed entry with its counterparts only; counterparts: each model "
                           "with itself, each new model and T21 entry against the old gallery, and each T12-mapped "
                           "old gallery with its new model both ways (pipeline.score.entries)")
    bootstrap_resamples: int = Field(1000, ge=0, description="resamples of the queries for each criterion cell's "
                                                             "paired interval (pipeline.score.uncertainty); 0: none")
    interval_level: float = Field(0.95, gt=0, lt=1, description="the criterion intervals' confidence level")
    split_rows: int = Field(1_000_000, gt=0, description="with in_ray and flat search: a pair whose gallery on disk "
                            "has more rows is scored in tasks of whole part files of about this many rows, merged "
                            "exactly")
    in_ray: bool = Field(False, description="score the pairs in Ray tasks across the cluster's nodes (one per GPU "
                         "of a GPU node, per CPU of another; pipeline.score.on_ray), merged into the same report as "
                         "one process makes; the embeddings folders must be on storage every node sees")
    max_flip_rate: float | None = Field(None, ge=0, le=1, description="a pair meets the verdict only when at most "
                                        "this share of its queries flips negatively (a top-1 hit under its "
                                        "gallery's reference pair, old/old for an old gallery, a miss under the "
                                        "pair: pipeline.score.flips); None: flips are reported, not judged")

    @model_validator(mode="after")
    def _flips_need_top1(self) -> "ScoreConfig":
        if self.max_flip_rate is not None and 1 not in self.topk:
            raise ValueError(f"max_flip_rate: negative flips are counted at top-1, which topk {self.topk} leaves out")
        return self
