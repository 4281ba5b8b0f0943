"""The method catalogue: every compatible-training and cross-model method, one entry each.

An entry says what a method trains (model 2 alone, or transformations with it, or only
transformations between two frozen models), what it needs (the old model's classifier, an old
forward pass on every batch, the old-space statistics), which matrix entries its transformations
add and through which routes it is meant to be compatible, and the terms of its objective
(``pipeline.compat.losses``; ``pipeline.compat.objectives`` adds them up). Everything else asks
this module instead of comparing method names, so that a new method is one ``register`` call:
in the process that loads the config (a job's workers receive the entry in their inputs,
``pipeline.train.training.TrainInputs``), for instance from a module named in
``COMPAT_EMBED_METHODS`` (comma-separated), which the
catalogue imports once its own entries are in.

Routes against the old gallery (docs/design.md, 'Routes against the old gallery'):

- ``direct``: model 2's features as they are;
- ``T21``: model 2's features mapped by its backward transformation, entry ``<model>.t21``;
- ``T12``: the old gallery mapped by its forward transformation, entry ``<old>.t12.<model>``,
  searched by model 2's queries.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum

from pipeline.compat import losses
from pipeline.config import CompatConfig, ConfigError, FitConfig
from pipeline.model.transformations import BACKWARD, FORWARD


class Kind(StrEnum):
    TRAIN = "training"  # compatible training: model 2 trains (with its transformations, if any)
    CMC = "CMC"         # cross-model compatibility: both models frozen, only T12 and T21 train


class Role(StrEnum):
    INDEPENDENT = "independent"  # no compatibility term: new/new's upper bound, new/old's lower bound
    BASELINE = "baseline"        # a published method that LCE is compared with
    LCE = "lce"                  # Learning Compatible Embeddings, in one of its manners
    RETRIEVAL = "retrieval"      # transformations trained to retrieve across the two models (this project's CMC)


class Route(StrEnum):
    DIRECT = "direct"
    T21 = "T21"
    T12 = "T12"


ROUTE_OF_TRANSFORM = {BACKWARD: Route.T21, FORWARD: Route.T12}


@dataclass(frozen=True)
class Method:
    name: str
    kind: Kind
    role: Role
    terms: Callable[..., dict]  # one batch (losses.TrainingBatch or losses.CmcBatch) -> its terms
    trains: tuple[str, ...] = ()        # transformations trained: BACKWARD (T21) and/or FORWARD (T12)
    needs_statistics: bool = False      # the old-space centers and boundaries
    needs_old_classifier: bool = False  # model 1's classifier (BCT's influence loss)
    needs_old_forward: bool = False     # model 1 run on every training batch (L2)
    needs_old_features: bool = False    # model 1's features of the batch, read by id from its train-split embeddings
    pulls_features: bool = False        # LCE's point-wise term, with a compat.target_pull (losses.pulled_regression)
    bounds_features: bool = False       # a boundary (compactness) term, whose bounds are b_j - m
    new_new_benchmark: bool = False     # LCE's new/new accuracy is expected to be at least this one's
    searches_rows: bool = False         # CMC: its terms search a sample of the fit's rows (losses.RetrievalMemory)

    @property
    def needs_old_model(self) -> bool:
        return (self.kind is Kind.CMC or self.needs_statistics or self.needs_old_classifier or self.needs_old_forward
                or self.needs_old_features)

    def reads_old_features(self, compat: CompatConfig) -> bool:
        """Whether its terms read model 1's features of the batch: always, or for its point-wise
        term with a ``compat.target_pull``."""
        return self.needs_old_features or (self.pulls_features and compat.target_pull is not None)

    @property
    def compares_spaces_directly(self) -> bool:
        """Whether model 2's features meet the old space as they are (equal dimensions needed)."""
        return self.needs_old_model and not self.trains

    @property
    def routes(self) -> tuple[Route, ...]:
        """The transformed matrix entries its transformations add, T21 first."""
        return tuple(ROUTE_OF_TRANSFORM[name] for name in (BACKWARD, FORWARD) if name in self.trains)

    @property
    def compatible_routes(self) -> tuple[Route, ...]:
        """The routes through which it is meant to be compatible with the old model, T21 first."""
        if not self.needs_old_model:
            return ()
        return self.routes or (Route.DIRECT,)

    @property
    def judged_route(self) -> Route:
        """The route that validation and a sweep's confirmation judge: the first compatible one
        (direct for a method that is not meant to be compatible)."""
        return (self.compatible_routes or (Route.DIRECT,))[0]


_CATALOGUE: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add ``method`` to the catalogue (a name may be registered once)."""
    if method.name in _CATALOGUE:
        raise ValueError(f"method {method.name!r} is already registered")
    unknown = [name for name in method.trains if name not in ROUTE_OF_TRANSFORM]
    if unknown:
        raise ValueError(f"method {method.name!r}: unknown transformations {unknown}")
    _CATALOGUE[method.name] = method
    return method


def unregister(name: str) -> None:
    _CATALOGUE.pop(name, None)


def names(kind: Kind) -> list[str]:
    return [name for name, method in _CATALOGUE.items() if method.kind is kind]


def method_named(name: str, kind: Kind | None = None) -> Method:
    """The catalogue's entry ``name`` (of ``kind``, when given); a clear error naming the choices."""
    method = _CATALOGUE.get(name)
    if method is None or (kind is not None and method.kind is not kind):
        choices = names(kind) if kind else sorted(_CATALOGUE)
        raise ValueError(f"unknown {kind.value + ' ' if kind else ''}method {name!r}: expected one of {choices} "
                         f"(a method of your own module is registered by naming the module in {PLUGINS_VARIABLE})")
    return method



def method_of(fit: FitConfig) -> Method:
    """The catalogue's entry of a fit config's ``method``, of the fit's kind."""
    return method_named(fit.method, Kind(fit.method_kind))


def check_fits(fits: Iterable[tuple[str, FitConfig, bool | None]], source: str) -> None:
    """Each fit's method an entry of its kind that trains against an old model where the fit has
    one (True), never where it has none (False; None: either way); else ``ConfigError`` naming
    ``source`` and the key (``PipelineConfig.fits``, ``LineageConfig.fits``)."""
    for key, fit, has_old_model in fits:
        where = f"{source}: key '{key + '.' if key else ''}method'"
        try:
            method = method_of(fit)
        except ValueError as error:
            raise ConfigError(f"{where}: {error}") from None
        if has_old_model is False and method.needs_old_model:
            raise ConfigError(f"{where}: {fit.method!r} needs an old model, and {fit.name} trains without one")
        if has_old_model and not method.needs_old_model:
            raise ConfigError(f"{where}: {fit.method!r} has no compatibility with the model {fit.name} follows")

INDEPENDENT = register(Method("independent", Kind.TRAIN, Role.INDEPENDENT, losses.no_terms))
register(Method("bct", Kind.TRAIN, Role.BASELINE, losses.influence_terms, needs_statistics=True,
                needs_old_classifier=True, new_new_benchmark=True))
register(Method("l2", Kind.TRAIN, Role.BASELINE, losses.regression_terms, needs_old_forward=True))
register(Method("lce_direct", Kind.TRAIN, Role.LCE, losses.lce_direct_terms, needs_statistics=True,
                pulls_features=True, bounds_features=True))
register(Method("lce_backward", Kind.TRAIN, Role.LCE, losses.lce_backward_terms, (BACKWARD,), needs_statistics=True,
                pulls_features=True, bounds_features=True))
# lce_forward's only boundary is in the new space, with running angles: no old-space bound to warn of
register(Method("lce_forward", Kind.TRAIN, Role.LCE, losses.lce_forward_terms, (FORWARD,), needs_statistics=True,
                needs_old_features=True))
register(Method("lce_bidirectional", Kind.TRAIN, Role.LCE, losses.lce_bidirectional_terms, (BACKWARD, FORWARD),
                needs_statistics=True, needs_old_features=True, pulls_features=True, bounds_features=True))
register(Method("lce_cmc", Kind.CMC, Role.LCE, losses.lce_cmc_terms, (BACKWARD, FORWARD), needs_statistics=True,
                pulls_features=True, bounds_features=True))
register(Method("rbt_cmc", Kind.CMC, Role.BASELINE, losses.rbt_cmc_terms, (BACKWARD, FORWARD)))
register(Method("lce_rbt_cmc", Kind.CMC, Role.LCE, losses.lce_rbt_cmc_terms, (BACKWARD, FORWARD),
                needs_statistics=True, pulls_features=True, bounds_features=True))
register(Method("retrieval_cmc", Kind.CMC, Role.RETRIEVAL, losses.retrieval_cmc_terms, (BACKWARD, FORWARD),
                searches_rows=True))
PLUGINS_VARIABLE = "COMPAT_EMBED_METHODS"
for _plugin in filter(None, os.environ.get(PLUGINS_VARIABLE, "").split(",")):
    importlib.import_module(_plugin.strip())  # a module whose import registers methods


def t21_entry(model: str) -> str:
    """The matrix entry of ``model``'s features mapped by its T21 into the old space."""
    return f"{model}.t21"


def t12_entry(old: str, model: str) -> str:
    """The matrix entry of the old gallery mapped by ``model``'s T12 into ``model``'s space."""
    return f"{old}.t12.{model}"


def entry_name(route: Route, model: str, old: str) -> str:
    """The matrix entry that ``route`` of ``model`` searches or is searched by against ``old``'s gallery."""
    return {Route.DIRECT: model, Route.T21: t21_entry(model), Route.T12: t12_entry(old, model)}[route]


def entry_carrier(entry: str, old: str) -> str:
    """The model (or CMC artifact) whose transformation made ``entry``; a plain model's own name."""
    return entry.removesuffix(".t21").removeprefix(f"{old}.t12.")
