"""The method catalogue: what each method trains, needs and adds to the matrix."""

import pytest

from pipeline.compat import losses
from pipeline.compat.methods import (
    Kind,
    Method,
    Role,
    Route,
    check_fits,
    entry_carrier,
    entry_name,
    method_named,
    method_of,
    names,
    register,
    unregister,
)
from pipeline.config import CmcConfig, CompatConfig, ConfigError, TrainConfig, validate
from pipeline.model.transformations import BACKWARD, FORWARD


def test_every_method_of_the_paper_is_catalogued_with_its_transformations_and_needs():
    assert names(Kind.TRAIN) == ["independent", "bct", "l2", "lce_direct", "lce_backward", "lce_forward",
                                 "lce_bidirectional"]
    assert names(Kind.CMC) == ["lce_cmc", "rbt_cmc", "lce_rbt_cmc", "retrieval_cmc"]
    assert [n for n in names(Kind.CMC) if method_named(n).searches_rows] == ["retrieval_cmc"]
    assert not method_named("retrieval_cmc").needs_statistics  # it searches the rows, no class statistics
    trains = {name: method_named(name).trains for name in names(Kind.TRAIN) + names(Kind.CMC)}
    assert trains["lce_backward"] == (BACKWARD,) and trains["lce_forward"] == (FORWARD,)
    assert trains["lce_bidirectional"] == trains["lce_cmc"] == trains["rbt_cmc"] == (BACKWARD, FORWARD)
    assert not method_named("independent").needs_old_model
    assert method_named("bct").needs_old_classifier and method_named("bct").needs_statistics
    assert method_named("l2").needs_old_forward and not method_named("l2").needs_statistics
    assert method_named("rbt_cmc").needs_old_model and not method_named("rbt_cmc").needs_statistics
    reads_old_features = [name for name in names(Kind.TRAIN) if method_named(name).needs_old_features]
    assert reads_old_features == ["lce_forward", "lce_bidirectional"]
    # with a target_pull, LCE's point-wise term reads them too, in every manner that maps into the old space
    pulled = CompatConfig(target_pull=0.3)
    assert [name for name in names(Kind.TRAIN) if method_named(name).reads_old_features(pulled)] == [
        "lce_direct", "lce_backward", "lce_forward", "lce_bidirectional"]
    assert method_named("lce_direct").reads_old_features(TrainConfig(name="m", method="lce_direct", compat=pulled).compat)
    assert not method_named("lce_direct").reads_old_features(TrainConfig(name="m", method="lce_direct").compat)


def test_routes_say_which_entries_a_method_adds_and_through_which_it_is_compatible():
    assert method_named("lce_bidirectional").routes == (Route.T21, Route.T12)
    assert method_named("lce_bidirectional").judged_route is Route.T21
    assert method_named("lce_forward").compatible_routes == (Route.T12,)
    assert method_named("lce_direct").compatible_routes == (Route.DIRECT,)
    assert method_named("independent").compatible_routes == () and method_named("independent").routes == ()
    assert method_named("lce_direct").compares_spaces_directly and not method_named("lce_backward").compares_spaces_directly


@pytest.mark.parametrize("route", list(Route))
def test_entry_names_are_built_and_parsed_in_one_place(route):
    name = entry_name(route, "lce-s1", "old")
    assert entry_carrier(name, "old") == "lce-s1"
    assert {Route.DIRECT: "lce-s1", Route.T21: "lce-s1.t21", Route.T12: "old.t12.lce-s1"}[route] == name


def test_configs_take_catalogued_methods_of_their_kind_only():
    wrong_kind = validate(TrainConfig, {"name": "m", "method": "lce_cmc"}, "m.yaml")  # the schema knows no catalogue
    with pytest.raises(ConfigError, match=r"m.yaml: key 'new.2.method': unknown training method 'lce_cmc': expected "
                                          r"one of \['independent', 'bct'"):
        check_fits([("new.2", wrong_kind, None)], "m.yaml")
    with pytest.raises(ConfigError, match="c.yaml: key 'method': unknown CMC method 'lce_direct'"):
        check_fits([("", validate(CmcConfig, {"name": "c", "method": "lce_direct", "new_model": "n"}), None)], "c.yaml")


def test_a_fit_without_an_old_model_takes_no_method_that_needs_one_and_a_follower_one_that_does():
    with pytest.raises(ConfigError, match=r"x.yaml: key 'old.method': 'lce_backward' needs an old model, and m "
                                          r"trains without one"):
        check_fits([("old", TrainConfig(name="m", method="lce_backward"), False)], "x.yaml")
    with pytest.raises(ConfigError, match=r"key 'models.1.method': 'independent' has no compatibility"):
        check_fits([("models.1", TrainConfig(name="m"), True)], "x.yaml")
    check_fits([("models.1", TrainConfig(name="m", method="bct"), True), ("new.0", TrainConfig(name="n"), None)], "x")


def test_a_registered_method_is_a_config_choice_until_it_is_removed():
    toy = Method("toy", Kind.TRAIN, Role.LCE, losses.lce_backward_terms, (BACKWARD,), needs_statistics=True)
    register(toy)
    try:
        assert method_of(TrainConfig(name="m", method="toy")) is toy
        with pytest.raises(ValueError, match="already registered"):
            register(toy)
    finally:
        unregister("toy")
    with pytest.raises(ValueError, match="unknown training method 'toy'"):
        method_of(TrainConfig(name="m", method="toy"))


def _compared_literals(tree) -> list[tuple[int, str]]:
    """(line, literal) of every string literal compared with ``==``, ``!=``, ``in`` or ``not in``."""
    import ast

    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            for side in [node.left, *node.comparators]:
                for item in (side.elts if isinstance(side, (ast.Tuple, ast.List, ast.Set)) else [side]):
                    if isinstance(item, ast.Constant) and isinstance(item.value, str):
                        found.append((node.lineno, item.value))
    return found


def test_no_module_outside_the_catalogue_compares_a_method_name_with_a_literal():
    import ast
    from pathlib import Path

    catalogued = set(names(Kind.TRAIN) + names(Kind.CMC))
    offenders = []
    for folder in ("pipeline", "jobs", "tuning", "bench", "scripts"):
        for path in Path(folder).rglob("*.py"):
            if path.as_posix() == "pipeline/compat/methods.py":
                continue
            offenders += [f"{path}:{line} {value!r}" for line, value in _compared_literals(ast.parse(path.read_text()))
                          if value in catalogued]
    assert not offenders, offenders


def test_modules_named_in_the_environment_register_their_methods():
    import os
    import subprocess
    import sys

    code = ("from pipeline.compat.methods import method_of\nfrom pipeline.config import TrainConfig\n"
            "print(method_of(TrainConfig(name='m', method='plugin_direct')).compatible_routes)")
    env = {**os.environ, "COMPAT_EMBED_METHODS": "tests.compat.plugin_method"}
    shown = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert shown.strip() == "(<Route.DIRECT: 'direct'>,)"
