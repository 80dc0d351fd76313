"""The fast tier's module check (``--modules-touched``, tests/_modules_touched.py): the package's modules found on
disk, and a module counted only when one of its functions runs inside a test."""

import glob
import os
import sys

import _modules_touched as touched
import pytest

from npejax import io
from npejax.sim import settings

pytestmark = pytest.mark.fast  # the whole file is in the fast tier

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_python_file_of_the_package_is_a_module_to_check():
    modules = touched.package_modules()
    on_disk = sorted(os.path.realpath(p) for p in glob.glob(os.path.join(ROOT, "npejax", "**", "*.py"), recursive=True))
    assert sorted(os.path.realpath(p) for p in modules) == on_disk
    names = set(modules.values())
    assert {"npejax", "npejax.nn", "npejax.nn.train", "npejax.sim.settings", "npejax.surveys.sdss"} <= names
    assert touched.defines_functions(settings.__file__)
    assert not touched.defines_functions(os.path.join(ROOT, "npejax", "__init__.py"))  # a docstring, no function


def test_a_module_counts_when_one_of_its_functions_runs_in_a_test():
    tracker = touched.ModulesTouched()
    previous = sys.gettrace()
    sys.settrace(tracker._trace)
    try:
        io.is_temporary("x")  # outside a test: not counted
        tracker.current = "tests/test_x.py::test_one"
        io.is_temporary("x")
        tracker.current = "tests/test_x.py::test_two"
        io.is_temporary("y")  # already recorded: the first test stays
    finally:
        sys.settrace(previous)
    assert tracker.first == {io.__file__: "tests/test_x.py::test_one"}
