"""The package's layout holds what its docstrings say: the math packages import no Ray (but
``pipeline.score.on_ray``, the one module of score/ that scores in Ray tasks); score is reached
through its front; only flows/ orders more than two stages; no circle; no module over 500 lines,
no function over 60; tuning/ runs no subprocess; only the workspace knows the run folder's layout."""

import subprocess
import sys

import pytest


@pytest.mark.parametrize("package", ["pipeline.compat", "pipeline.score"])
def test_the_math_packages_import_no_ray(package):
    """Every module of ``package``, imported in a fresh process, leaves Ray unimported (so that
    its math runs, and is tested, without a cluster)."""
    code = ("import importlib, pkgutil, sys\n"
            f"import {package} as package\n"
            "for module in pkgutil.iter_modules(package.__path__):\n"
            "    if module.name != 'on_ray':\n"
            "        importlib.import_module(f'{package.__name__}.{module.name}')\n"
            "print(sorted(name for name in sys.modules if name.split('.')[0] == 'ray'))\n")
    imported = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert imported.strip() == "[]", imported


def test_the_module_that_scores_in_ray_is_the_only_one_of_score_that_imports_it():
    code = "import sys, pipeline.score.on_ray\nprint('ray' in sys.modules)\n"
    imported = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert imported.strip() == "True"


ROOTS = ("pipeline", "jobs", "tuning", "scripts", "bench")
STAGES = ("data", "train", "encode", "score", "index", "lineage")  # the flow's stages (model, compat: its math)


def _modules(*roots: str):
    import ast
    from pathlib import Path

    for root in roots:
        for path in sorted(Path(root).rglob("*.py")):
            yield path, ast.parse(path.read_text())


def _imports(tree) -> list[str]:
    import ast

    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
    return found


def test_the_rest_of_the_project_scores_through_the_front_of_score():
    allowed = {("pipeline/flows/scenarios.py", "pipeline.score.results")}  # it loads torch: kept out of the front
    reached = [f"{path}: {module}" for path, tree in _modules(*ROOTS) if not path.as_posix().startswith("pipeline/score/")
               for module in _imports(tree) if module.startswith("pipeline.score.")
               and (path.as_posix(), module) not in allowed]
    assert not reached, reached


def test_only_flows_imports_more_than_two_stages_and_no_module_imports_in_a_circle():
    graph: dict[str, set[str]] = {}
    for path, tree in _modules("pipeline"):
        name = ".".join(path.with_suffix("").parts).removesuffix(".__init__")
        graph[name] = {module for module in _imports(tree) if module.startswith("pipeline.")}
    stages: dict[str, set[str]] = {}
    for name, targets in graph.items():
        package = name.split(".")[1] if "." in name else ""
        stages.setdefault(package, set()).update(
            target.split(".")[1] for target in targets if target.split(".")[1] in STAGES and target.split(".")[1] != package)
    assert {package for package, used in stages.items() if len(used) > 2} == {"flows"}, stages

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for target in graph.get(start, ()):
            target = target if target in graph else target.rsplit(".", 1)[0]
            if target == goal or (target not in seen and (seen.add(target) or reaches(target, goal, seen))):
                return True
        return False

    circles = [name for name in graph if reaches(name, name, set())]
    assert not circles, circles


def test_the_house_rules_on_size_subprocesses_and_the_run_folder():
    import ast
    import re

    long_modules = [f"{path}: {len(path.read_text().splitlines())}" for path, _ in _modules("pipeline")
                    if len(path.read_text().splitlines()) > 500]
    long_functions = [f"{path}:{node.lineno} {node.name}" for path, tree in _modules("pipeline", "jobs", "tuning")
                      for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                      and node.end_lineno - node.lineno + 1 > 60]
    shelled = [str(path) for path, tree in _modules("tuning") if "subprocess" in _imports(tree)]
    layout = re.compile(r'/ f?"(models|stats|embeddings|report|ray|registry|validation|tune)[/"]')
    joined = [f"{path}" for path, _ in _modules("pipeline", "jobs", "tuning", "scripts")
              if path.as_posix() != "pipeline/flows/workspace.py" and layout.search(path.read_text())]
    assert (long_modules, long_functions, shelled, joined) == ([], [], [], [])
