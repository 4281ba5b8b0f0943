"""The package's layout holds what its docstrings say: the math packages import no Ray (but
``pipeline.score.on_ray``, the one module of score/ that scores in Ray tasks)."""

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
