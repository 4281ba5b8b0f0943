"""The schemas of the compatibility terms (``pipeline.compat``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipeline.config.base import Strict


class RetrievalSide(Strict):
    """One transformation's retrieval term (``retrieval_cmc``): its softmax scale and the weight of
    the point-wise regression kept beside it."""

    scale: float = Field(gt=0, description="s of the softmax over the gallery's cosines")
    lambda_regression: float = Field(ge=0, description="weight of ||T(x) - y||^2 on the same image, which keeps "
                                                       "which image lies near which")


class RetrievalConfig(Strict):
    """``retrieval_cmc``: each transformation trained to make the other model's gallery retrieve the
    same class (``pipeline.compat.losses.retrieval_loss``), against a sample of the fit's rows.

    T21 (backward) moves new queries among the old gallery's fixed features; T12 (forward) moves
    the old gallery's items among the new queries' fixed features. Measured on stored features of
    the five scenarios (one seed, test split): T21 wants a flatter softmax (s 8) and a stronger
    regression (0.3) than T12 (s 16, 0.1), whose mapped items it may move freely; README,
    'Cross-model compatibility'."""

    memory: int = Field(4096, gt=0, description="rows of the fit (its shard) each step searches, with the batch's own")
    backward: RetrievalSide = RetrievalSide(scale=8.0, lambda_regression=0.3)
    forward: RetrievalSide = RetrievalSide(scale=16.0, lambda_regression=0.1)


class CompatConfig(Strict):
    """Weights and options of the compatibility terms.

    ``lambda_align`` multiplies the alignment loss reduced as the mean over classes of the
    squared distance between unit vectors (``2 - 2 cos``, whatever the dimension ``d``). The
    public LCE code takes the mean over the ``C x d`` entries instead, ``1/d`` of this
    reduction, with lambda 100: that is ``lambda_align = 100 / d`` here (0.78 at d = 128, 1.56
    at d = 64), not a constant.
    ``lambda_boundary`` multiplies the mean over samples of the angular hinge (radians).
    """

    lambda_align: float = Field(1.0, ge=0)
    lambda_boundary: float = Field(1.0, ge=0)
    lambda_influence: float = Field(1.0, ge=0, description="weight of a cross-entropy through another space's "
                                                           "classifier: BCT's influence loss, lce_rbt_cmc's T12 one")
    class_scale: float = Field(16.0, gt=0, description="lce_rbt_cmc: s of T12's cosine classifier of the new "
                                                       "space's class centers")
    lambda_regression: float = Field(1.0, ge=0, description="weight of the point-wise regression: L2's, the CMC "
                                                            "baseline's and LCE's (target_pull)")
    compactness_margin: float = Field(0.0, ge=0, description="m in radians: boundary shrinks to b - m (at least 0, "
                                                         "the center: a warning names the classes it reaches)")
    new_space_margin: float | None = Field(None, ge=0, description="m of the boundaries in model 2's space (T12's "
                                           "targets: the forward manner, CMC's T12); None: compactness_margin")
    target_pull: float | None = Field(
        None, ge=0, le=1, description="LCE's point-wise term (methods marked pulls_features): the batch's features in "
                                      "the old space (direct: f2, else T21(f2)) regress onto their old features moved "
                                      "this share of the way to their class centers, weight lambda_regression; None: "
                                      "no such term")
    pull_classes: Literal["all", "unseen"] = Field(
        "all", description="the classes whose samples the point-wise term covers: all, or those the old model was "
                           "not trained on (the class-level terms alone keep the others)")
    centers: Literal["mean", "classifier"] = Field(
        "mean", description="c_j: the normalised mean of the old model's normalised features of class j; or, for the "
                            "classes the old model was trained on, its normalised classifier row (the others keep the "
                            "mean); boundaries are measured around the chosen centers")
    boundary: Literal["max", "quantile", "iqr"] = "quantile"
    boundary_quantile: float = Field(0.95, gt=0, le=1, description="the quantile rule's level, in the old space and "
                                                                   "for the new space's running boundaries (forward)")
    running_momentum: float = Field(0.9, ge=0, lt=1, description="forward: the moving-average momentum per batch of "
                                                                 "the new space's boundary angles")
    old_classes_only: bool = Field(False, description="compatibility terms only over the old model's classes")
    retrieval: RetrievalConfig = RetrievalConfig()

    @property
    def forward_margin(self) -> float:
        """The margin of the boundaries that T12's outputs are held in (model 2's space)."""
        return self.compactness_margin if self.new_space_margin is None else self.new_space_margin
